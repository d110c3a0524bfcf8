"""Torch training checkpoints whose weights are nested (docs/guide/outputs.md, issue 14 item 2): well-known
nests found by themselves, `--key PATH` picks one, ambiguity is exit 2 listing the candidates,
and `from(SOURCE, state=PATH)` does the same for a transplant source."""

from __future__ import annotations

import pytest
import torch
from helpers import refused, run
from safetensors.torch import load_file, save_file

import reinit


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _tutorial_checkpoint(path, net: torch.nn.Module) -> None:
    """The PyTorch tutorial's training checkpoint layout."""
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    torch.save(
        {
            "epoch": 5,
            "model_state_dict": net.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "loss": 0.25,
        },
        path,
    )


def test_tutorial_training_checkpoint_applies_and_the_output_loads(tmp_path):
    net = _net()
    src = tmp_path / "ckpt.pt"
    _tutorial_checkpoint(src, net)
    out = tmp_path / "out.safetensors"
    res = run("apply", src, "-r", "2.*=xavier_uniform", "-o", out, "--seed", "1")
    assert res.exit_code == 0, res.output
    fresh = _net()
    result = fresh.load_state_dict(load_file(out), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh[0].weight, net[0].weight)  # kept
    assert not torch.equal(fresh[2].weight, net[2].weight)  # re-initialized


def test_model_state_nest_is_found(tmp_path):
    net = _net()
    src = tmp_path / "ckpt.pth"
    torch.save({"model_state": net.state_dict(), "step": 100, "config": {"lr": 0.1}}, src)
    with reinit.open_checkpoint(src) as ck:
        assert sorted(ck.names()) == sorted(net.state_dict())


def test_several_nests_are_an_exit_2_listing_the_candidates(tmp_path):
    net = _net()
    src = tmp_path / "ckpt.pt"
    sd = net.state_dict()
    torch.save({"model": sd, "ema": {k: v + 1 for k, v in sd.items()}}, src)
    line = refused(
        tmp_path,
        ["apply", str(src), "-r", "*=keep", "-o", str(tmp_path / "o.safetensors")],
        2,
        "model (4 tensors)",
        "ema (4 tensors)",
        "--key",
    )
    assert "several nests" in line


def test_key_picks_one_nest(tmp_path):
    net = _net()
    src = tmp_path / "ckpt.pt"
    sd = net.state_dict()
    ema = {k: v + 1 for k, v in sd.items()}
    torch.save({"model": sd, "extra": {"ema": ema}}, src)
    out = tmp_path / "out.safetensors"
    res = run("apply", src, "-r", "*=keep", "-o", out, "--key", "extra.ema")
    assert res.exit_code == 0, res.output
    assert torch.equal(load_file(out)["0.weight"], ema["0.weight"])
    # a key that is not there: exit 2 naming what is
    refused(
        tmp_path,
        [
            "apply",
            str(src),
            "-r",
            "*=keep",
            "-o",
            str(tmp_path / "o2.safetensors"),
            "--key",
            "extra.x",
        ],
        2,
        "--key extra.x",
        "no key 'x'",
        "ema",
    )


def test_inspect_and_report_take_key(tmp_path):
    net = _net()
    src = tmp_path / "ckpt.pt"
    sd = net.state_dict()
    torch.save({"model": sd, "ema": sd}, src)
    res = run("inspect", src, "--key", "ema")
    assert res.exit_code == 0, res.output
    assert "2.weight" in res.output
    res = run("report", src, "--key", "model")
    assert res.exit_code == 0, res.output
    assert run("inspect", src).exit_code == 2


def test_tensors_elsewhere_hint_the_key(tmp_path):
    src = tmp_path / "ckpt.pt"
    torch.save({"weights": {"a": torch.zeros(2)}, "epoch": 1}, src)
    line = refused(
        tmp_path, ["apply", str(src), "-r", "*=keep", "-o", str(tmp_path / "o.safetensors")], 1
    )
    assert "--key PATH: weights (1 tensors)" in line


def test_from_state_picks_the_nest_of_a_transplant_source(tmp_path):
    net, donor = _net(), _net()
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(1.0)
    src = tmp_path / "a.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, src)
    donor_path = tmp_path / "donor.pt"
    torch.save({"model_state_dict": donor.state_dict(), "ema": donor.state_dict()}, donor_path)
    out = tmp_path / "out.safetensors"
    # ambiguous without state=: exit 2 naming the candidates
    refused(
        tmp_path,
        ["apply", str(src), "-r", f"2.*=from({donor_path})", "-o", str(out)],
        2,
        "model_state_dict (4 tensors)",
        "state=",
    )
    res = run("apply", src, "-r", f"2.*=from({donor_path}, state=model_state_dict)", "-o", out)
    assert res.exit_code == 0, res.output
    got = load_file(out)
    assert torch.equal(got["2.weight"], donor.state_dict()["2.weight"])
    assert torch.equal(got["0.weight"], net.state_dict()["0.weight"])


def test_key_follows_names_with_dots_and_integer_keys(tmp_path):
    """Optimizer state is keyed by parameter names (`state["0.weight"]`, as
    `torch.distributed.checkpoint.state_dict.get_state_dict` gives it) or by integers (as
    `Optimizer.state_dict()` does): the `--key` paths the error's hint lists must work (they
    were split at every dot, and "0" never matched the key 0)."""
    net = _net()
    exp_avg = {k: torch.full_like(v, 3.0) for k, v in net.state_dict().items()}
    by_name = {k: {"exp_avg": v, "exp_avg_sq": v * 2} for k, v in exp_avg.items()}
    by_int = {i: {"exp_avg": v} for i, v in enumerate(exp_avg.values())}
    src = tmp_path / "ckpt.pt"
    torch.save({"optim": {"state": by_name}, "opt2": {"state": by_int}}, src)
    res = run("inspect", src)
    assert res.exit_code == 1 and "optim.state.0.weight (2 tensors)" in res.stderr, res.output
    for key, want in (
        ("optim.state.0.weight", {"exp_avg", "exp_avg_sq"}),
        ("opt2.state.0", {"exp_avg"}),
    ):
        out = tmp_path / f"{key}.safetensors"
        res = run("apply", src, "-r", "*=keep", "-o", out, "--key", key)
        assert res.exit_code == 0, res.output
        got = load_file(out)
        assert set(got) == want and torch.equal(got["exp_avg"], exp_avg["0.weight"])


def _gpt2_state() -> dict[str, torch.Tensor]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    return {k: v.clone() for k, v in GPT2LMHeadModel(cfg).state_dict().items()}


@pytest.mark.parametrize(
    ("layout", "lost"),
    [
        ("nested", "optimizer_state_dict"),  # the state under model_state_dict, beside the rest
        ("flat+counter", "step"),  # a flat state dict with a non-tensor entry
    ],
)
def test_in_place_on_a_training_checkpoint_is_refused_not_flattened(tmp_path, layout, lost):
    """`--in-place` on a training checkpoint wrote the model's state dict alone over it: the
    optimizer state, the epoch and the `model_state_dict` nesting were gone, and the training
    script's `torch.load(...)["model_state_dict"]` failed. Refused (exit 2, the file as it was)."""
    sd = _gpt2_state()
    src = tmp_path / "train.pt"
    if layout == "nested":
        opt = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3}]}
        torch.save({"epoch": 5, "model_state_dict": sd, "optimizer_state_dict": opt}, src)
    else:
        torch.save({**sd, "step": 100}, src)
    rule = ["-r", "transformer.ln_f.bias=ones"]
    refused(tmp_path, ["apply", str(src), *rule, "--in-place"], 2, str(src), lost, "-o")
    refused(tmp_path, ["apply", str(src), *rule, "-o", str(src), "--in-place"], 2, lost)
    # a plain state dict is still rewritten in place, and loads back into the model
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    assert run("apply", plain, *rule, "--in-place", "-q").exit_code == 0
    back = torch.load(plain, weights_only=True)
    assert back.keys() == sd.keys() and torch.equal(back["transformer.ln_f.bias"], torch.ones(16))
