"""DeepSpeed ZeRO (stages 1-3) checkpoint folders as a source, read as DeepSpeed's
`zero_to_fp32.py` reads them (fp32 master weights from the flat partitions and `param_shapes`).

Two kinds of fixture. `tests/golden/deepspeed/zeroN/`: checkpoints written by DeepSpeed 0.19.8
itself (on CPU, 2 gloo processes; see its make.py), with what DeepSpeed's own `zero_to_fp32`
returns for each. And, built here from DeepSpeed's layout as `zero_to_fp32.py` reads it (to
cover what those do not: frozen parameters, buffers, shared parameters, hostile files): `latest` -> tag folder,
`*_model_states.pt` (`module` in bf16, `buffer_names`, `param_shapes` per group,
`shared_params`, `frozen_param_*`) and one `*_optim_states.pt` per rank (`zero_stage`,
`partition_count`, `single_partition_of_fp32_groups` padded to 2 x world for stages 1-2,
`fp32_flat_groups` with every parameter split across ranks for stage 3), with DeepSpeed's own
objects (a loss scaler, the `ZeroStageEnum`) pickled under their DeepSpeed names."""

from __future__ import annotations

import enum
import math
import os
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from dcp_fixture import state
from helpers import refused, run
from safetensors.torch import load_file

WORLD = 2
TIED = ("lm_head.weight", "model.embed_tokens.weight")  # shared_params: alias -> owner
FROZEN = "model.norm.weight"  # requires_grad=False: in frozen_param_*, not in a group
BUFFER = "model.rotary_emb.inv_freq"  # a buffer: in `module` and buffer_names (read as fp32)


class LossScaler:  # DeepSpeed's, as pickled in every fp16/bf16 optimizer file
    def __init__(self) -> None:
        self.cur_scale = 65536.0


class ZeroStageEnum(int, enum.Enum):
    optimizer_states = 1
    gradients = 2
    weights = 3


@contextmanager
def deepspeed_names():
    """Pickle the two classes above under DeepSpeed's module names (as DeepSpeed would)."""
    made = {}
    for mod, cls in (
        ("deepspeed.runtime.fp16.loss_scaler", LossScaler),
        ("deepspeed.runtime.zero.config", ZeroStageEnum),
    ):
        parts = mod.split(".")
        for i in range(1, len(parts)):  # the parent packages, so that the import succeeds
            made.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        m = types.ModuleType(mod)
        setattr(m, cls.__name__, cls)
        made[mod], cls.__module__ = m, mod
    sys.modules.update(made)
    try:
        yield
    finally:
        for mod in made:
            del sys.modules[mod]
        LossScaler.__module__ = ZeroStageEnum.__module__ = __name__


def groups(sd: dict[str, torch.Tensor]) -> list[list[str]]:
    """Two parameter groups, as weight decay splits them (the tied head is not a parameter)."""
    names = [n for n in sd if n not in (TIED[0], FROZEN, BUFFER)]
    decay = [n for n in names if n.endswith(".weight") and "norm" not in n]
    return [decay, [n for n in names if n not in decay]]


def stage12_partitions(sd, group: list[str]) -> list[torch.Tensor]:
    flat = torch.cat([sd[n].reshape(-1) for n in group])
    align = 2 * WORLD
    flat = torch.cat([flat, torch.zeros(align * math.ceil(flat.numel() / align) - flat.numel())])
    return list(flat.chunk(WORLD))


def stage3_partitions(sd, group: list[str]) -> list[torch.Tensor]:
    per_rank: list[list[torch.Tensor]] = [[] for _ in range(WORLD)]
    for n in group:
        v = sd[n].reshape(-1)
        part = math.ceil(v.numel() / WORLD)
        v = torch.cat([v, torch.zeros(part * WORLD - v.numel())])
        for r in range(WORLD):
            per_rank[r].append(v[r * part : (r + 1) * part])
    return [torch.cat(p) for p in per_rank]


def make_zero(
    root: Path, stage: int, extra: object = None, pads: object = None
) -> dict[str, torch.Tensor]:
    """A ZeRO checkpoint of the tiny Llama at `root`; returns what zero_to_fp32 would."""
    sd = state(torch.float32)
    sd[TIED[0]] = sd[TIED[1]]
    sd[FROZEN] = torch.linspace(0.5, 1.5, sd[FROZEN].numel())  # 16 values: 8 per rank
    sd[BUFFER] = (torch.arange(5) / 3).to(torch.bfloat16).float()
    tag = root / "global_step100"
    tag.mkdir(parents=True)
    (root / "latest").write_text("global_step100")
    gs = groups(sd)
    split = stage12_partitions if stage <= 2 else stage3_partitions
    parts = [split(sd, g) for g in gs]  # [group][rank]
    shapes = [OrderedDict((n, sd[n].shape) for n in g) for g in gs]
    with deepspeed_names():
        for r in range(WORLD):
            key = "single_partition_of_fp32_groups" if stage <= 2 else "fp32_flat_groups"
            osd = {
                "loss_scaler": LossScaler(),
                "zero_stage": ZeroStageEnum(stage),
                "partition_count": WORLD,
                key: [parts[g][r].clone() for g in range(len(gs))],
                "base_optimizer_state": {"state": {0: {"exp_avg": torch.ones(3)}}},
                "ds_version": "0.19.8",
                "extra": extra,
                **({"param_alignment_paddings": pads} if pads is not None else {}),
            }
            torch.save(
                {"optimizer_state_dict": osd, "ds_config": {"zero_optimization": {"stage": stage}}},
                tag / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt",
            )
            if stage <= 2 and r > 0:
                continue
            name = (
                "mp_rank_00_model_states.pt"
                if stage <= 2
                else f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"
            )
            module = {
                n: (t.to(torch.bfloat16) if stage <= 2 else torch.empty(0)) for n, t in sd.items()
            }
            module[BUFFER] = sd[BUFFER].to(torch.bfloat16)
            frozen = sd[FROZEN] if stage <= 2 else stage3_partitions(sd, [FROZEN])[r]
            torch.save(
                {
                    "module": module,
                    "buffer_names": [BUFFER],
                    "param_shapes": shapes,
                    "shared_params": {TIED[0]: TIED[1]},
                    "frozen_param_shapes": {FROZEN: sd[FROZEN].shape},
                    "frozen_param_fragments": {FROZEN: frozen.clone()},
                    "ds_version": "0.19.8",
                },
                tag / name,
            )
    return sd


GOLDEN = Path(__file__).parent / "golden" / "deepspeed"


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_a_checkpoint_deepspeed_wrote_reads_as_its_zero_to_fp32(tmp_path, stage):
    import reinit

    want = load_file(GOLDEN / f"zero{stage}.zero_to_fp32.safetensors")
    with reinit.open_checkpoint(GOLDEN / f"zero{stage}") as ck:
        assert set(ck.names()) == set(want)
        for k, v in want.items():
            got = ck.read(k)
            assert got.dtype == torch.float32 and torch.equal(got, v), k
    out = tmp_path / "o.safetensors"
    res = run("apply", GOLDEN / f"zero{stage}", "--rule", "*.bias=zeros", "-o", out)
    assert res.exit_code == 0, res.output
    got = load_file(out)
    for k, v in want.items():
        assert torch.equal(got[k], torch.zeros_like(v) if k.endswith(".bias") else v), k


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_apply_reads_the_fp32_master_weights(tmp_path, stage):
    want = make_zero(tmp_path / "ckpt", stage)
    out = tmp_path / "o.safetensors"
    res = run("apply", tmp_path / "ckpt", "--rule", "*.bias=zeros", "-o", out)
    assert res.exit_code == 0, res.output
    got = load_file(out)
    assert set(got) == set(want)
    for k, v in want.items():
        exp = torch.zeros_like(v) if k.endswith(".bias") else v
        assert got[k].dtype == torch.float32 and torch.equal(got[k], exp), k  # not the bf16 copy
    assert "deepspeed" not in sys.modules
    optim = next(
        (tmp_path / "ckpt" / "global_step100").glob("*rank_0_*optim_states.pt")
    ).read_bytes()
    assert b"deepspeed.runtime.fp16.loss_scaler" in optim  # DeepSpeed's objects were there


def test_inspect_the_tag_folder_and_report_stds(tmp_path):
    want = make_zero(tmp_path / "ckpt", 3)
    res = run("inspect", tmp_path / "ckpt" / "global_step100", "--json")
    assert res.exit_code == 0, res.output
    import json

    listed = {t["name"]: tuple(t["shape"]) for t in json.loads(res.stdout)}
    assert listed == {k: tuple(v.shape) for k, v in want.items()}
    assert run("report", tmp_path / "ckpt", "-o", tmp_path / "r.json").exit_code == 0
    stds = {
        t["name"]: t["after"]["std"]
        for t in json.loads((tmp_path / "r.json").read_text())["tensors"]
    }
    for k, v in want.items():
        assert stds[k] == pytest.approx(v.double().std(correction=0).item(), rel=1e-6, abs=1e-12)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_optimizer_file_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    make_zero(tmp_path / "ckpt", 2, extra=_Payload(marker))
    out = tmp_path / "o.safetensors"
    refused(
        tmp_path,
        ["apply", str(tmp_path / "ckpt"), "--rule", "*.bias=zeros", "-o", str(out)],
        1,
        "optim_states.pt",
        "posix.system",
    )
    assert not marker.exists()


def test_a_missing_rank_file_is_refused(tmp_path):
    make_zero(tmp_path / "ckpt", 2)
    (
        tmp_path / "ckpt" / "global_step100" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    ).unlink()
    refused(tmp_path, ["inspect", str(tmp_path / "ckpt")], 1, "2 ranks", "1 optimizer")


@pytest.mark.parametrize("kind", ["fifo", "link out"])
def test_a_rank_file_that_is_a_fifo_or_links_out_is_refused(tmp_path, kind):
    """Every file of a ZeRO folder must be a regular file inside the folder given: a FIFO
    blocked every command forever, a link to a file elsewhere was read."""
    from helpers import run_child

    make_zero(tmp_path / "ckpt", 2)
    rank1 = tmp_path / "ckpt" / "global_step100" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    rank1.rename(tmp_path / "elsewhere.pt")
    if kind == "fifo":
        os.mkfifo(rank1)
    else:
        rank1.symlink_to(tmp_path / "elsewhere.pt")
    proc = run_child("inspect", tmp_path / "ckpt")
    assert proc.returncode == 1, proc.stderr
    assert rank1.name in proc.stderr and ("FIFO" if kind == "fifo" else "outside") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _edit_model_states(root: Path, stage: int, edit) -> None:  # type: ignore[no-untyped-def]
    name = (
        "mp_rank_00_model_states.pt" if stage <= 2 else "zero_pp_rank_0_mp_rank_00_model_states.pt"
    )
    path = root / "global_step100" / name
    with deepspeed_names():
        states = torch.load(path, weights_only=False)  # our own fixture
        edit(states)
        torch.save(states, path)


def _first(group: dict) -> str:  # type: ignore[type-arg]
    return next(iter(group))


MALFORMED = {
    "a group that is not a mapping": lambda s: s["param_shapes"].append("abc"),
    "a shape that is not a list of sizes": lambda s: s["param_shapes"][0].__setitem__(
        _first(s["param_shapes"][0]), "xy"
    ),
    "frozen fragments that are not a mapping": lambda s: s.__setitem__(
        "frozen_param_fragments", [1]
    ),
    "a frozen shape larger than its fragments": lambda s: s["frozen_param_shapes"].__setitem__(
        FROZEN, [32]
    ),
    "shared params that are not a mapping": lambda s: s.__setitem__("shared_params", [1, 2]),
    "buffer names that are not names": lambda s: s.__setitem__("buffer_names", [["x"]]),
}


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_model_states_file_is_a_corrupt_checkpoint(tmp_path, stage, case):
    """Model states that DeepSpeed would never write are a one-line corrupt-checkpoint error
    naming the file (each of these was an "internal error", at inspect or at apply)."""
    make_zero(tmp_path / "ckpt", stage)
    _edit_model_states(tmp_path / "ckpt", stage, MALFORMED[case])
    out = tmp_path / "o.safetensors"
    for args in (
        ["inspect", tmp_path / "ckpt"],
        ["apply", tmp_path / "ckpt", "-r", "*.bias=zeros", "-o", out],
    ):
        refused(tmp_path, [str(a) for a in args], 1, "model_states.pt")


@pytest.mark.parametrize("pads", [[[0]], "x", [[0, 0], [True]]])
def test_malformed_alignment_paddings_are_a_corrupt_checkpoint(tmp_path, pads):
    """`param_alignment_paddings` (ZeRO's `parameter_alignment`, stages 1-2) must give one
    padding per parameter of each group: read at the wrong offsets otherwise."""
    make_zero(tmp_path / "ckpt", 2, pads=pads)
    refused(tmp_path, ["inspect", str(tmp_path / "ckpt")], 1, "_optim_states.pt", "paddings")


def test_stage3_with_a_rank_s_model_states_missing_is_refused(tmp_path):
    """Stage 3 splits frozen parameters over every rank's model states file: one missing
    left half of such a parameter (an "internal error" when it was read)."""
    make_zero(tmp_path / "ckpt", 3)
    (tmp_path / "ckpt" / "global_step100" / "zero_pp_rank_1_mp_rank_00_model_states.pt").unlink()
    out = tmp_path / "o.safetensors"
    for args in (
        ["inspect", tmp_path / "ckpt"],
        ["apply", tmp_path / "ckpt", "-r", "*.bias=zeros", "-o", out],
    ):
        refused(tmp_path, [str(a) for a in args], 1, "model states", "missing")


def test_in_place_on_a_zero_folder_is_refused(tmp_path):
    """reinit reads ZeRO folders but does not write them: `--in-place` wrote model.safetensors
    beside the rank files, and the folder still read as the untouched ZeRO checkpoint."""
    make_zero(tmp_path / "ckpt", 2)
    for src in (tmp_path / "ckpt", tmp_path / "ckpt" / "global_step100"):
        refused(tmp_path, ["apply", str(src), "-r", "*.bias=zeros", "--in-place"], 2, "ZeRO")


def test_latest_naming_a_missing_tag_says_so(tmp_path):
    """`latest` naming a tag folder that is gone (deleted, or a save that never finished)
    beside one that holds a checkpoint: the error names `latest` and the tag folders there
    (it said the folder held no model.safetensors)."""
    make_zero(tmp_path / "ckpt", 2)
    (tmp_path / "ckpt" / "latest").write_text("global_step200")
    refused(
        tmp_path,
        ["inspect", str(tmp_path / "ckpt")],
        1,
        "latest",
        "global_step200",
        "global_step100",
    )


@pytest.mark.parametrize("stage", [2, 3])
def test_verify_counts_every_file_it_reads(tmp_path, stage):
    """`reinit verify` of a ZeRO folder reads its model-states file(s) and every rank's
    optimizer file; it said `1 file(s)` (the folder) for 3 or 4 files."""
    import json

    want = make_zero(tmp_path / "ckpt", stage)
    tag = tmp_path / "ckpt" / "global_step100"
    on_disk = sorted(p.name for p in tag.iterdir())
    res = run("verify", tmp_path / "ckpt")
    assert res.exit_code == 0, res.output
    assert f"valid ZeRO folder: {len(on_disk)} file(s), {len(want)} tensors" in res.stdout
    doc = json.loads(run("verify", tmp_path / "ckpt", "--json").stdout)
    files = {Path(f["path"]).name: f for f in doc["files"]}
    assert sorted(files) == on_disk and doc["tensors"] == len(want)
    stored = want[FROZEN].numel() * 4 + want[BUFFER].numel() * 2  # fp32 fragments, bf16 buffer
    models = [f for n, f in files.items() if n.endswith("_model_states.pt")]
    assert sum(f["bytes"] for f in models) == stored
    assert sum(f["tensors"] for f in models) == 2 + (
        WORLD - 1 if stage == 3 else 0
    )  # the frozen one: on each rank
    opt = sum(f["bytes"] for n, f in files.items() if n.endswith("_optim_states.pt"))
    owned = [k for k in want if k not in (FROZEN, BUFFER, TIED[0])]
    assert opt == sum(want[k].numel() for k in owned) * 4  # fp32 master weights, no padding
