"""DeepSpeed-MoE ZeRO folders: each expert's weights also sit in their own file
(`layer_{L}_expert_{E}_mp_rank_00_model_states.pt`) beside the ranks' files.

The fixtures in `tests/golden/deepspeed/` were written by DeepSpeed 0.19.8 itself (CPU, 2 gloo
processes), with DeepSpeed's own fp32 master weights (`safe_get_full_fp32_param`) for the
ep_size 1 ones: `moe-*`, one `deepspeed.moe.layer.MoE` of 4 experts (make_moe.py; one with
ZeRO's `parameter_alignment`), and `autoep-*`, DeepSpeed's AutoEP layers in a tiny Mixtral
(make_autoep.py). `moe-zero2-ep2`, `autoep-zero3-ep2` (expert parallelism) and
`moe-nozero-ep2` (no ZeRO: `expp_rank_*` optimizer files) are refused in one line. Two cases
are built here from DeepSpeed's source layout, not by its writer: the `{'optimizer': None}`
`expp_rank_*` files older versions wrote beside ZeRO files, and an expert file the partitions
do not hold. Where DeepSpeed is installed (it is not a reinit dependency), one test also has
it write fresh folders with make_moe.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import refused, run
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "golden" / "deepspeed"
EXPERT = "moe.deepspeed_moe.experts.deepspeed_experts.{}.{}"
EXPERT_TENSORS = {
    EXPERT.format(e, t) for e in range(4) for t in ("0.weight", "0.bias", "2.weight", "2.bias")
}


def copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(GOLDEN / name, tmp_path / name))


@pytest.mark.parametrize("name", ["moe-zero1", "moe-zero2", "moe-zero2-aligned"])
def test_every_expert_reads_as_deepspeed_s_own_fp32_master_weights(tmp_path, name):
    """`-aligned`: ZeRO's `parameter_alignment` pads a 12-element bias by 4 in each expert
    group (`param_alignment_paddings`); read without them, 14 of the 21 tensors were
    silently another's values."""
    import reinit

    want = load_file(GOLDEN / f"{name}.fp32.safetensors")
    assert set(want) >= EXPERT_TENSORS
    tag = GOLDEN / name / "global_step1"
    with reinit.open_checkpoint(GOLDEN / name) as ck:
        assert set(ck.names()) == set(want)
        for k, v in want.items():
            got = ck.read(k)
            assert got.dtype == torch.float32 and torch.equal(got, v), k
        for e in range(4):  # each expert file: the module's bf16 copy of those masters
            f = torch.load(tag / f"layer_0_expert_{e}_mp_rank_00_model_states.pt")
            assert len(f) == 4
            for k, v in f.items():
                assert torch.equal(ck.read(k).to(v.dtype), v), k
    out = tmp_path / "o.safetensors"
    res = run("apply", GOLDEN / name, "--rule", "*.bias=zeros", "-o", out)
    assert res.exit_code == 0, res.output
    got = load_file(out)
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], torch.zeros_like(v) if k.endswith(".bias") else v), k


@pytest.mark.parametrize("name", ["autoep-zero2", "autoep-zero3"])
def test_autoep_stacked_experts_read_as_deepspeed_s_own_fp32_master_weights(name):
    """DeepSpeed's AutoEP layers (a tiny Mixtral's MoE blocks replaced, make_autoep.py) stack
    the experts (`mlp.experts.w1` [4, 24, 16]); with ZeRO 1-2 each expert file holds one
    expert's slice of each (`mlp.experts.w1.3` [24, 16]), a stage 3 save has none."""
    import reinit

    want = load_file(GOLDEN / f"{name}.fp32.safetensors")
    w1 = "model.layers.0.mlp.experts.w1"
    assert want[w1].shape == (4, 24, 16)
    tag = GOLDEN / name / "global_step1"
    with reinit.open_checkpoint(GOLDEN / name) as ck:
        assert set(ck.names()) == set(want)
        for k, v in want.items():
            got = ck.read(k)
            assert got.dtype == torch.float32 and torch.equal(got, v), k
        files = sorted(tag.glob("layer_0_expert_*_model_states.pt"))
        assert len(files) == (4 if name == "autoep-zero2" else 0)
        for e, path in enumerate(files):
            f = torch.load(path)
            assert set(f) == {f"model.layers.0.mlp.experts.w{i}.{e}" for i in (1, 2, 3)}
            for k, v in f.items():
                assert torch.equal(ck.read(k.rpartition(".")[0])[e].to(v.dtype), v), k


def test_autoep_with_expert_parallelism_is_refused_in_one_line(tmp_path):
    """ZeRO-3 with autoep_size 2: `param_shapes` gives each rank's own [2, ...] experts, and
    reinit read half of every stacked expert tensor as if whole (13 tensors, 17,472 bytes
    instead of 26,688)."""
    ckpt = copy("autoep-zero3-ep2", tmp_path)
    refused(tmp_path, ["inspect", str(ckpt)], 1, "AutoEP layer 'model.layers.0.mlp'", "ep_size 2")


def test_expert_parallelism_is_refused_in_one_line(tmp_path):
    """ep_size 2 over 2 ranks: each rank's expert partition holds other experts under the same
    (local) names; joining them would give experts 0-1 twice and lose 2-3."""
    ckpt = copy("moe-zero2-ep2", tmp_path)
    args = ["apply", str(ckpt), "--rule", "*.bias=zeros", "-o", str(tmp_path / "o.safetensors")]
    refused(tmp_path, args, 1, "global_step1", "expert parallelism (ep_size 2)", "ep_size=1")


def test_a_moe_save_without_zero_is_refused_in_one_line(tmp_path):
    ckpt = copy("moe-nozero-ep2", tmp_path)
    refused(tmp_path, ["inspect", str(ckpt)], 1, "global_step1", "without ZeRO", "stage 1 or 2")


def test_the_expp_optimizer_files_older_versions_wrote_beside_zero_files_hold_no_weights(
    tmp_path,
):
    """Older `_save_moe_checkpoint`s wrote `{'optimizer': None}` per expert-parallel rank
    under ZeRO too (built here from that source's layout); they are not ranks' ZeRO files."""
    import reinit

    ckpt = copy("moe-zero2", tmp_path)
    torch.save(
        {"optimizer": None}, ckpt / "global_step1" / "expp_rank_0_mp_rank_00_optim_states.pt"
    )
    want = load_file(GOLDEN / "moe-zero2.fp32.safetensors")
    with reinit.open_checkpoint(ckpt) as ck:
        assert set(ck.names()) == set(want)
        assert all(torch.equal(ck.read(k), v) for k, v in want.items())


@pytest.mark.parametrize("case", ["unknown name", "other shape"])
def test_an_expert_file_the_partitions_do_not_hold_is_refused_not_dropped(tmp_path, case):
    """An expert tensor that the ZeRO partitions do not hold (built here: a second MoE layer's
    expert file, or one of another shape) would be lost if read without it: refused."""
    ckpt = copy("moe-zero2", tmp_path)
    name = EXPERT.format(0, "0.weight")
    if case == "unknown name":
        name = name.replace("moe.", "moe2.", 1)
    shape = (12, 8) if case == "unknown name" else (8, 8)
    bad = ckpt / "global_step1" / "layer_1_expert_0_mp_rank_00_model_states.pt"
    torch.save({name: torch.ones(shape, dtype=torch.bfloat16)}, bad)
    refused(tmp_path, ["inspect", str(ckpt)], 1, bad.name, f"'{name}'", "not supported")


@pytest.mark.slow
def test_folders_deepspeed_writes_here_read_or_refuse(tmp_path):
    """Only where DeepSpeed is installed: make_moe.py writes a ZeRO-2 MoE folder with ep_size
    1, read as DeepSpeed's own fp32 masters, and one with ep_size 2, refused."""
    pytest.importorskip("deepspeed")
    import reinit

    for ep in (1, 2):
        argv = [
            sys.executable,
            str(GOLDEN / "make_moe.py"),
            "2",
            str(ep),
            str(tmp_path / f"ep{ep}"),
        ]
        env = {**os.environ, "DS_ACCELERATOR": "cpu"}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    want = load_file(tmp_path / "ep1.fp32.safetensors")
    assert set(want) >= EXPERT_TENSORS
    with reinit.open_checkpoint(tmp_path / "ep1") as ck:
        assert set(ck.names()) == set(want)
        assert all(torch.equal(ck.read(k), v) for k, v in want.items())
    refused(tmp_path, ["inspect", str(tmp_path / "ep2")], 1, "expert parallelism (ep_size 2)")
