"""torch.distributed.checkpoint (DCP) directories as a source for every command and as an
output (`--format dcp`), and hostile DCP files refused without running their payload.

The sources are made once per session by `dcp_fixture.py` (a 2-process gloo job saving
DTensors `Shard(0)`, and `format_utils.torch_save_to_dcp`), from a tiny Llama whose vocab of
37 rows splits unevenly across the 2 ranks."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from filelock import FileLock
from helpers import ROOT, refused, run
from safetensors.torch import load_file, save_file

SOURCES = ["gloo-fp32", "gloo-bf16", "gloo-cols", "single-fp32"]
DTYPE_OF = {"gloo-fp32": "fp32", "gloo-bf16": "bf16", "gloo-cols": "fp32", "single-fp32": "fp32"}


@pytest.fixture(scope="session")
def dcp_root(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The sources, made once per run (a gloo job of two processes: seconds). Under
    pytest-xdist the workers share one copy: the first to get the lock makes it, in the run's
    base folder (the parent of each worker's). Tests only read it."""
    if worker_id == "master":
        return _make_dcp_sources(tmp_path_factory.mktemp("dcp"))
    root = tmp_path_factory.getbasetemp().parent / "dcp"
    with FileLock(f"{root}.lock"):
        if not root.is_dir():
            partial = _make_dcp_sources(root.with_name("dcp.partial"))
            partial.rename(root)  # whole or not at all
    return root


def _make_dcp_sources(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)  # a worker that failed half-way left it
    root.mkdir()
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "dcp_fixture.py"), str(root)],
        check=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return root


def expected(root: Path, source: str) -> dict[str, torch.Tensor]:
    return load_file(root / f"expected-{DTYPE_OF[source]}.safetensors")


def test_the_gloo_job_split_tensors_unevenly_across_two_files(dcp_root):
    md = pickle.loads((dcp_root / "gloo-fp32" / ".metadata").read_bytes())  # our own fixture
    emb = md.state_dict_metadata["model.model.embed_tokens.weight"]
    assert [tuple(c.sizes) for c in emb.chunks] == [(19, 16), (18, 16)]
    assert {i.relative_path for i in md.storage_data.values()} == {"__0_0.distcp", "__1_0.distcp"}
    cols = pickle.loads((dcp_root / "gloo-cols" / ".metadata").read_bytes())
    emb = cols.state_dict_metadata["model.model.embed_tokens.weight"]
    assert [tuple(c.offsets) for c in emb.chunks] == [(0, 0), (0, 8)]  # not rows: assembled


@pytest.mark.parametrize("source", SOURCES)
def test_inspect_lists_whole_shapes_and_dtypes(dcp_root, source):
    res = run("inspect", dcp_root / source, "--json")
    assert res.exit_code == 0, res.output
    listed = {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in json.loads(res.stdout)}
    want = {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in expected(dcp_root, source).items()
    }
    assert listed == want  # the model's names (the "model" nest), not "step"


@pytest.mark.parametrize("source", SOURCES)
def test_apply_writes_exactly_the_saved_tensors_with_biases_zeroed(dcp_root, source, tmp_path):
    out = tmp_path / "model.safetensors"
    res = run("apply", dcp_root / source, "--rule", "*.bias=zeros", "-o", out)
    assert res.exit_code == 0, res.output
    got, want = load_file(out), expected(dcp_root, source)
    assert got.keys() == want.keys()
    biases = [k for k in want if k.endswith(".bias")]
    assert len(biases) == 14
    for k, v in want.items():
        assert got[k].dtype == v.dtype
        assert torch.equal(got[k], torch.zeros_like(v) if k in biases else v), k


def test_the_output_loads_into_the_model_with_no_key_missing(dcp_root, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(dcp_root / "config.json", out / "config.json")
    res = run(
        "apply", dcp_root / "gloo-fp32", "--rule", "*.bias=zeros", "-o", out / "model.safetensors"
    )
    assert res.exit_code == 0, res.output
    model, info = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    want = expected(dcp_root, "gloo-fp32")["model.embed_tokens.weight"]
    assert torch.equal(model.model.embed_tokens.weight.detach(), want)


@pytest.mark.parametrize("source", SOURCES)
def test_report_stds_equal_the_saved_tensors(dcp_root, source, tmp_path):
    res = run("report", dcp_root / source, "-o", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    stds = {
        t["name"]: t["after"]["std"]
        for t in json.loads((tmp_path / "r.json").read_text())["tensors"]
    }
    want = expected(dcp_root, source)
    assert stds.keys() == want.keys()
    for k, v in want.items():
        assert stds[k] == pytest.approx(v.double().std(correction=0).item(), rel=1e-6, abs=1e-12), k


def test_from_a_dcp_directory_transplants(dcp_root, tmp_path):
    want = expected(dcp_root, "gloo-fp32")
    target = tmp_path / "target.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in want.items()}, target)
    out = tmp_path / "out.safetensors"
    src = dcp_root / "gloo-fp32"
    res = run(
        "apply",
        target,
        "--rule",
        f"model.embed_tokens.*=from({src}/)",
        "--rule",
        f"lm_head.*=from({src})",
        "-o",
        out,
    )
    assert res.exit_code == 0, res.output
    got = load_file(out)
    assert torch.equal(got["model.embed_tokens.weight"], want["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], want["lm_head.weight"])
    assert not got["model.layers.0.self_attn.q_proj.weight"].any()


def test_key_picks_the_nest_and_a_wrong_key_is_refused(dcp_root, tmp_path):
    ok = run("inspect", dcp_root / "gloo-fp32", "--key", "model", "--json")
    assert ok.exit_code == 0 and len(json.loads(ok.stdout)) == 35
    refused(
        tmp_path,
        ["inspect", str(dcp_root / "gloo-fp32"), "--key", "optimizer"],
        2,
        "optimizer",
        "model",
    )
    # `step` is a counter, which DCP stores as bytes: said so (it was "holds a NoneType")
    refused(tmp_path, ["inspect", str(dcp_root / "gloo-fp32"), "--key", "step"], 1, "holds a bytes")


def test_diff_of_the_sharded_and_the_single_process_checkpoint(dcp_root):
    res = run("diff", dcp_root / "gloo-fp32", dcp_root / "single-fp32", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["tensors"]
    assert len(rows) == 35 and {r["status"] for r in rows} == {"identical"}
    res = run("diff", dcp_root / "gloo-fp32", dcp_root / "gloo-bf16", "--json")
    rows = json.loads(res.stdout)["tensors"]
    assert {r["dtype_b"] for r in rows} == {"bfloat16"}


@pytest.mark.parametrize("source", ["gloo-fp32", "gloo-bf16", "single-fp32"])
def test_format_dcp_reads_back_equal_to_the_safetensors_output(dcp_root, source, tmp_path):
    rules = ["--rule", "*.bias=zeros", "--rule", "lm_head.weight=normal(std=0.02)", "--seed", "7"]
    st, outd = tmp_path / "o.safetensors", tmp_path / "o-dcp"
    assert run("apply", dcp_root / source, *rules, "-o", st).exit_code == 0
    res = run("apply", dcp_root / source, *rules, "--format", "dcp", "-o", f"{outd}/")
    assert res.exit_code == 0, res.output
    want = load_file(st)
    assert sorted(p.name for p in outd.iterdir()) == [".metadata", "__0_0.distcp", "reinit.json"]
    assert (tmp_path / "o-dcp.report.json").is_file()
    state = {k: torch.full_like(v, 7) for k, v in want.items()}
    dcp.load(state, checkpoint_id=outd)
    for k, v in want.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(outd, tmp_path / "o.pt")
    converted = torch.load(tmp_path / "o.pt", weights_only=True)
    assert converted.keys() == want.keys()
    assert all(torch.equal(converted[k], v) for k, v in want.items())


def test_format_dcp_output_is_itself_a_source(dcp_root, tmp_path):
    outd = tmp_path / "o-dcp"
    assert (
        run(
            "apply",
            dcp_root / "gloo-fp32",
            "--rule",
            "*.bias=zeros",
            "--format",
            "dcp",
            "-o",
            f"{outd}/",
        ).exit_code
        == 0
    )
    res = run("apply", outd, "--rule", "*.weight=zeros", "-o", tmp_path / "o.safetensors")
    assert res.exit_code == 0, res.output
    assert not any(t.any() for t in load_file(tmp_path / "o.safetensors").values())


@pytest.mark.parametrize(
    "args",
    [
        ["-o", "x.safetensors"],
        ["-o", "d/", "--max-shard-size", "1MB"],
        ["-o", "d/", "--format", "npz"],
    ],
)
def test_format_dcp_refusals_write_nothing(dcp_root, tmp_path, args, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(dcp_root / "single-fp32", src)
    fmt = [] if "--format" in args else ["--format", "dcp"]
    monkeypatch.chdir(tmp_path)
    refused(tmp_path, ["apply", str(src), "--rule", "*.bias=zeros", *fmt, *args], 2, "-")


# --- hostile files: refused, payload never run, nothing written ---------------------------


class _Payload:
    """Unpickling this runs `touch MARKER` (what an attacker's .metadata would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_metadata(dcp_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    src, marker = tmp_path / "src", tmp_path / "PWNED"
    shutil.copytree(dcp_root / "single-fp32", src)
    (src / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    return src, marker


@pytest.mark.parametrize("command", ["apply", "inspect", "report"])
def test_hostile_metadata_is_refused_and_never_run(dcp_root, tmp_path, command):
    src, marker = _hostile_metadata(dcp_root, tmp_path)
    pickle.loads(pickle.dumps(_Payload(tmp_path / "check")))  # the payload does run when unpickled
    assert (tmp_path / "check").exists()
    (tmp_path / "check").unlink()
    args = [command, str(src)] + (
        ["--rule", "*.bias=zeros", "-o", str(tmp_path / "o.safetensors")]
        if command == "apply"
        else []
    )
    refused(tmp_path, args, 1, str(src / ".metadata"), "posix.system")
    assert not marker.exists()


def test_hostile_metadata_nested_in_a_real_one_is_refused(dcp_root, tmp_path):
    src, marker = tmp_path / "src", tmp_path / "PWNED"
    shutil.copytree(dcp_root / "single-fp32", src)
    md = pickle.loads((src / ".metadata").read_bytes())
    md.planner_data["model.lm_head.weight"] = _Payload(marker)  # a payload deep inside
    (src / ".metadata").write_bytes(pickle.dumps(md))
    refused(
        tmp_path,
        ["apply", str(src), "--rule", "*.bias=zeros", "-o", str(tmp_path / "o.safetensors")],
        1,
        ".metadata",
    )
    assert not marker.exists()


@pytest.mark.parametrize("form", ["safetensors", "dcp"])
def test_hostile_distcp_blob_is_refused_and_never_run(dcp_root, tmp_path, form):
    src, marker = tmp_path / "src", tmp_path / "PWNED"
    shutil.copytree(dcp_root / "single-fp32", src)
    md = pickle.loads((src / ".metadata").read_bytes())
    index = next(i for i in md.storage_data if i.fqn == "model.lm_head.weight")
    info = md.storage_data[index]
    data = src / info.relative_path
    blob = tmp_path / "blob.pt"
    torch.save(_Payload(marker), blob)
    evil = blob.read_bytes()
    blob.unlink()
    info.offset, info.length = data.stat().st_size, len(evil)
    with open(data, "ab") as f:  # the record appended, the metadata pointing at it
        f.write(evil)
    (src / ".metadata").write_bytes(pickle.dumps(md))
    # lm_head comes last: with --format dcp every other tensor was written before it fails
    out = (
        ["-o", str(tmp_path / "o.safetensors")]
        if form == "safetensors"
        else ["--format", "dcp", "-o", f"{tmp_path}/o/"]
    )
    refused(
        tmp_path,
        ["apply", str(src), "--rule", "*.bias=zeros", *out],
        1,
        str(data),
        "posix.system",
    )
    assert not marker.exists()


def test_a_chunk_file_outside_the_directory_is_refused(dcp_root, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dcp_root / "single-fp32", src)
    md = pickle.loads((src / ".metadata").read_bytes())
    index = next(i for i in md.storage_data if i.fqn == "model.lm_head.weight")
    md.storage_data[index].relative_path = "../outside.distcp"
    (src / ".metadata").write_bytes(pickle.dumps(md))
    refused(tmp_path, ["inspect", str(src)], 1, "../outside.distcp")


def test_verify_reads_every_chunk_and_rechecks_checksums(dcp_root, tmp_path):
    res = run("verify", dcp_root / "gloo-bf16")
    assert res.exit_code == 0 and "valid DCP directory" in res.stdout and "35 tensors" in res.stdout
    assert "2 file(s)" in res.stdout, res.stdout  # __0_0.distcp and __1_0.distcp, not "1 file(s)"
    doc = json.loads(run("verify", dcp_root / "gloo-bf16", "--json").stdout)
    files = {Path(f["path"]).name: f for f in doc["files"]}
    assert sorted(files) == ["__0_0.distcp", "__1_0.distcp"]
    assert sum(f["bytes"] for f in files.values()) == doc["bytes"]
    assert doc["tensors"] == 35 and all(0 < f["tensors"] <= 35 for f in files.values())
    outd = tmp_path / "o-dcp"
    args = ["apply", dcp_root / "gloo-fp32", "--rule", "*.bias=zeros", "--checksums"]
    assert run(*args, "--format", "dcp", "-o", f"{outd}/").exit_code == 0
    assert run("verify", outd, "--report", tmp_path / "o-dcp.report.json").exit_code == 0
    md = pickle.loads((outd / ".metadata").read_bytes())
    index = next(i for i in md.storage_data if i.fqn == "model.norm.weight")
    blob = bytearray((outd / "__0_0.distcp").read_bytes())
    info = md.storage_data[index]
    record = bytes(blob[info.offset : info.offset + info.length])
    at = info.offset + record.index(torch.ones(16).numpy().tobytes())  # the stored values
    blob[at : at + 4] = torch.tensor([2.0]).numpy().tobytes()
    (outd / "__0_0.distcp").write_bytes(bytes(blob))
    bad = run("verify", outd, "--report", tmp_path / "o-dcp.report.json")
    assert bad.exit_code == 1 and "model.norm.weight" in bad.stderr


def test_a_flat_state_beside_a_nested_optimizer_reads_the_flat_tensors(tmp_path):
    from torch.distributed.checkpoint.format_utils import torch_save_to_dcp

    w, exp_avg = torch.randn(4, 3), torch.randn(4, 3)
    torch.save({"w": w, "optimizer": {"state": {"w": {"exp_avg": exp_avg}}}}, tmp_path / "t.pt")
    torch_save_to_dcp(tmp_path / "t.pt", tmp_path / "ck")
    res = run("inspect", tmp_path / "ck", "--json")
    assert res.exit_code == 0, res.output
    assert [t["name"] for t in json.loads(res.stdout)] == ["w"]  # the optimizer is never read
    import reinit

    report = reinit.apply(tmp_path / "ck", ["w=zeros"], tmp_path / "o", format="dcp")
    assert report.summary.reinit == 1
    state = {"w": torch.ones(4, 3)}
    dcp.load(state, checkpoint_id=tmp_path / "o")
    assert not state["w"].any()


def test_the_default_output_keeps_a_dotted_directory_name_whole(tmp_path, monkeypatch):
    """A DCP directory `D` writes `D.reinit.safetensors` (docs/reference.md), dots in D's name
    included: `run.v2/` once wrote `run.reinit.safetensors`, which `run.v1/` also claimed."""
    from torch.distributed.checkpoint.format_utils import torch_save_to_dcp

    torch.save({"model": {"w": torch.ones(2, 2)}, "step": 1}, tmp_path / "t.pt")
    torch_save_to_dcp(tmp_path / "t.pt", tmp_path / "run.v2")
    monkeypatch.chdir(tmp_path)
    for source in ("run.v2", "run.v2/"):
        res = run("apply", source, "-r", "w=zeros", "-q", "--overwrite")
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.glob("run*.safetensors")) == [
        "run.v2.reinit.safetensors"
    ]
    assert (tmp_path / "run.v2.reinit.report.json").is_file()


def test_the_guide_page_runs(tmp_path):
    """docs/guide/distributed.md: its ```bash block runs as one script (it holds a heredoc) in
    an empty folder with this checkout's `reinit` on PATH, and its ```python block then loads
    the `--format dcp` output with `dcp.load` into the safetensors output's names and values."""
    page = (ROOT / "docs" / "guide" / "distributed.md").read_text(encoding="utf-8")
    fences = page.split("```")
    bash = [b[len("bash\n") :] for b in fences[1::2] if b.startswith("bash\n")]
    python = [b[len("python\n") :] for b in fences[1::2] if b.startswith("python\n")]
    assert len(bash) == 1 and len(python) == 1
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", bash[0]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = load_file(tmp_path / "model.safetensors")
    assert torch.count_nonzero(written["head.weight"]) == 0
    namespace: dict[str, object] = {}  # the block stands alone, as a reader copies it
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(python[0], "distributed.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    state = namespace["state"]
    assert isinstance(state, dict) and state.keys() == written.keys()
    for name, tensor in written.items():
        assert torch.equal(state[name], tensor), name


def _moved_chunk(md: object, fqn: str, old: tuple[int, ...], new: tuple[int, ...]) -> None:
    """Point the chunk of `fqn` at `old` to offsets `new` (same sizes, same stored bytes)."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    entry = md.state_dict_metadata[fqn]  # type: ignore[attr-defined]
    i = next(i for i, c in enumerate(entry.chunks) if tuple(c.offsets) == old)
    entry.chunks[i] = ChunkStorageMetadata(torch.Size(new), entry.chunks[i].sizes)
    storage = md.storage_data  # type: ignore[attr-defined]
    storage[MetadataIndex(fqn, torch.Size(new))] = storage.pop(MetadataIndex(fqn, torch.Size(old)))


@pytest.mark.parametrize(
    ("source", "old", "new"),
    [
        ("gloo-fp32", (19, 0), (1, 0)),  # rows 1..18 twice, rows 19..36 never
        ("gloo-cols", (0, 8), (0, 4)),  # columns 4..7 twice, 12..15 never
    ],
)
def test_overlapping_chunks_are_refused(dcp_root, tmp_path, source, old, new):
    """Chunks that overlap cover as many elements as the tensor has while leaving a hole: the
    hole must not be written out as whatever memory held (it was, silently, exit 0)."""
    src = tmp_path / "src"
    shutil.copytree(dcp_root / source, src)
    md = pickle.loads((src / ".metadata").read_bytes())
    _moved_chunk(md, "model.model.embed_tokens.weight", old, new)
    (src / ".metadata").write_bytes(pickle.dumps(md))
    out = tmp_path / "o.safetensors"
    for args in (
        ["inspect", str(src)],
        ["apply", str(src), "--rule", "*.bias=zeros", "-o", str(out)],
    ):
        refused(tmp_path, args, 1, ".metadata", "model.model.embed_tokens.weight", "overlap")


def test_dtypes_torch_saves_untyped_are_read(tmp_path):
    """float8, uint16/32/64 and complex32 are pickled by `torch.save` as `_rebuild_tensor_v3`
    over an `UntypedStorage`: a DCP of them (torch's own `dcp.save`, and reinit's own
    `--format dcp`) reads back byte for byte (it was refused as unsafe)."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "w8": torch.randn(6, 4, generator=g).to(torch.float8_e4m3fn),
        "w5": torch.randn(5, generator=g).to(torch.float8_e5m2),
        "u16": torch.arange(0, 60000, 7000, dtype=torch.int32).to(torch.uint16),
        "u32": torch.arange(9, dtype=torch.int64).to(torch.uint32) * 400_000_000,
        "u64": torch.tensor([1, 2**40, 3], dtype=torch.int64).to(torch.uint64),
        "f32": torch.randn(3, 2, generator=g),
    }
    src = tmp_path / "ck"
    dcp.save({"model": sd}, checkpoint_id=src, no_dist=True)
    for args in (["inspect", src], ["verify", src]):
        res = run(*args)
        assert res.exit_code == 0, res.output
    out, back = tmp_path / "o.safetensors", tmp_path / "o-dcp"
    assert run("apply", src, "--rule", "f32=zeros", "-o", out).exit_code == 0
    assert (
        run("apply", src, "--rule", "f32=zeros", "--format", "dcp", "-o", f"{back}/").exit_code == 0
    )
    res = run("diff", out, back, "--json")
    assert res.exit_code == 0, res.output
    got = load_file(out)
    for name, want in sd.items():
        if name != "f32":
            assert got[name].dtype == want.dtype
            assert got[name].view(torch.uint8).equal(want.view(torch.uint8)), name
    assert not got["f32"].any()


@pytest.mark.parametrize("kind", ["fifo", "link out", "metadata link out"])
def test_a_chunk_file_that_is_a_fifo_or_links_out_is_refused(dcp_root, tmp_path, kind):
    """A `.distcp` file (or `.metadata`) must be a regular file inside the directory, as a
    model folder's shards must: a FIFO blocked every command forever, and a link to a file
    elsewhere was read. A link inside the directory is still read."""
    from helpers import run_child

    src = tmp_path / "src"
    shutil.copytree(dcp_root / "gloo-fp32", src)
    name = ".metadata" if kind.startswith("metadata") else "__1_0.distcp"
    (src / name).rename(tmp_path / name)
    if kind == "fifo":
        os.mkfifo(src / name)
    else:
        (src / name).symlink_to(tmp_path / name)
    out = tmp_path / "o.safetensors"
    proc = run_child("apply", src, "--rule", "*.bias=zeros", "-o", out)
    assert proc.returncode == 1, proc.stderr
    assert name in proc.stderr and ("FIFO" if kind == "fifo" else "outside") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    (src / name).unlink()
    (tmp_path / name).rename(src / "moved")
    (src / name).symlink_to("moved")  # a link that stays inside the directory
    assert run("inspect", src).exit_code == 0
    assert run("apply", src, "--rule", "*.bias=zeros", "-o", out).exit_code == 0


def test_an_empty_chunk_with_any_strides_is_read(tmp_path):
    """A chunk with no elements keeps its view's strides in its record (a column shard left
    empty by an uneven split: `[3, 0]`, strides `(2, 1)`); torch reads it, and reinit refused
    it as "a non-contiguous tensor"."""
    g = torch.Generator().manual_seed(0)
    sd = {"e": torch.randn(3, 5, generator=g)[:, 5:], "w": torch.randn(2, 2, generator=g)}
    assert sd["e"].stride() == (5, 1)
    dcp.save({"model": sd}, checkpoint_id=tmp_path / "ck", no_dist=True)
    out = tmp_path / "o.safetensors"
    res = run("apply", tmp_path / "ck", "--rule", "w=zeros", "-o", out)
    assert res.exit_code == 0, res.output
    got = load_file(out)
    assert got["e"].shape == (3, 0) and not got["w"].any()


def test_a_size_past_what_torch_addresses_is_a_corrupt_checkpoint(dcp_root, tmp_path):
    """A tensor declared `[2**62, 2**62]` (one whole chunk) is refused as the safetensors
    header's limit refuses it, naming the tensor (it was an "internal error" from torch)."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    src = tmp_path / "src"
    shutil.copytree(dcp_root / "single-fp32", src)
    md = pickle.loads((src / ".metadata").read_bytes())
    fqn, big = "model.lm_head.weight", torch.Size([2**62, 2**62])
    entry = md.state_dict_metadata[fqn]
    entry.size = big
    entry.chunks[0] = ChunkStorageMetadata(entry.chunks[0].offsets, big)
    assert MetadataIndex(fqn, entry.chunks[0].offsets) in md.storage_data
    (src / ".metadata").write_bytes(pickle.dumps(md))
    out = tmp_path / "o.safetensors"
    for args in (
        ["inspect", str(src)],
        ["apply", str(src), "--rule", "*.bias=zeros", "-o", str(out)],
    ):
        refused(tmp_path, args, 1, ".metadata", fqn, "2^63 - 1")


def test_in_place_on_a_dcp_directory_rewrites_it_as_dcp_or_is_refused(dcp_root, tmp_path):
    """`--in-place` on a DCP directory wrote model.safetensors into it and said so, but the
    folder still read (for reinit and torch) as the untouched DCP checkpoint: refused (exit
    2, nothing written) unless `--format dcp` rewrites the DCP itself."""
    src = tmp_path / "src"
    shutil.copytree(dcp_root / "gloo-fp32", src)
    refused(
        tmp_path, ["apply", str(src), "--rule", "*.bias=zeros", "--in-place"], 2, "--format dcp"
    )
    # {"model": sd, "step": 100} rewritten as the flat state dict lost "step" and the "model."
    # prefix that dcp.load({"model": ...}) of the training code needs: refused
    args = ["apply", str(src), "--rule", "*.bias=zeros", "--in-place", "--format", "dcp"]
    refused(tmp_path, args, 2, "the nest model", "step", "give -o")
    shutil.rmtree(src)  # a DCP directory of the state dict alone is rewritten in place
    flat = ["apply", dcp_root / "gloo-fp32", "-r", "*.bias=ones", "--format", "dcp", "-o", src]
    assert run(*flat).exit_code == 0
    res = run("apply", src, "--rule", "*.bias=zeros", "--in-place", "--format", "dcp")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in src.iterdir()) == [".metadata", "__0_0.distcp", "reinit.json"]
    state = {k: torch.empty_like(v) for k, v in expected(dcp_root, "gloo-fp32").items()}
    dcp.load(state, checkpoint_id=src)
    assert all(not v.any() for k, v in state.items() if k.endswith(".bias"))


@pytest.mark.parametrize("how", ["--overwrite", "--in-place"])
def test_format_dcp_never_deletes_what_the_folder_holds_besides(dcp_root, tmp_path, how):
    """`--format dcp` replaces its folder whole: `--overwrite` of a project folder (`.git/`,
    notes) and `--in-place` on a DCP directory holding a config and notes deleted them all.
    Refused (exit 2, nothing touched) as a safetensors folder output refuses it."""
    folder = tmp_path / "f"
    if how == "--in-place":  # a DCP of the state dict alone (a nested one is refused anyway)
        run("apply", dcp_root / "gloo-fp32", "-r", "*.bias=ones", "--format", "dcp", "-o", folder)
    else:
        folder.mkdir()
    (folder / ".git").mkdir()
    (folder / "notes.txt").write_text("mine")
    src = folder if how == "--in-place" else dcp_root / "gloo-fp32"
    args = ["apply", str(src), "--rule", "*.bias=zeros", "--format", "dcp", how]
    args += ["-o", f"{folder}/"] if how == "--overwrite" else []
    line = refused(tmp_path, args, 2, str(folder), "notes.txt")
    if how == "--overwrite":  # --in-place is refused too (above): it is no way out here
        assert "--in-place" not in line, line
    for name in (".git", "notes.txt"):  # a DCP folder of its own files only is replaced
        shutil.rmtree(folder / name) if name == ".git" else (folder / name).unlink()
    if how == "--overwrite":
        assert (
            run("apply", src, "--rule", "*.bias=zeros", "--format", "dcp", "-o", folder).exit_code
            == 2
        )
    assert run(*args).exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "reinit.json"]


class _Storage:
    def __init__(self, key: str):
        self.key = key


class _Record:
    """Pickles as torch's own tensor record: `_rebuild_tensor_v2` over storage `key`."""

    def __init__(self, key: str, size: tuple[int, ...]):
        self.key, self.size = key, size

    def __reduce__(self):  # type: ignore[no-untyped-def]
        from collections import OrderedDict

        args = (_Storage(self.key), 0, self.size, (1,), False, OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _RecordPickler(pickle.Pickler):
    def persistent_id(self, obj):  # type: ignore[no-untyped-def]
        return (
            ("storage", torch.FloatStorage, obj.key, "cpu", 4)
            if isinstance(obj, _Storage)
            else None
        )


def _record(key: str, size: tuple[int, ...]) -> bytes:
    """A `torch.save` archive of 4 float32 values whose pickle claims `size` elements of the
    storage record `key` (torch.load refuses both lies)."""
    import io
    import zipfile

    pkl, out = io.BytesIO(), io.BytesIO()
    _RecordPickler(pkl, protocol=2).dump(_Record(key, size))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl.getvalue())
        z.writestr("archive/data/0", torch.arange(4.0).numpy().tobytes())
        z.writestr("archive/version", "3\n")
    return out.getvalue()


@pytest.mark.parametrize(
    ("key", "size", "fragment"),
    [("0", (8,), "past its storage"), ("7", (4,), "storage record '7'")],
)
def test_a_record_that_lies_about_its_storage_is_refused(tmp_path, key, size, fragment):
    """A chunk record whose tensor runs past its storage was read on into the bytes after it
    (the zip's own records, written out as values, exit 0); one naming a storage the archive
    lacks was an internal error. Both are a corrupt checkpoint naming the file."""
    src = tmp_path / "ck"
    dcp.save(
        {"model": {"w": torch.zeros(size), "v": torch.ones(3)}}, checkpoint_id=src, no_dist=True
    )
    md = pickle.loads((src / ".metadata").read_bytes())
    info = md.storage_data[next(i for i in md.storage_data if i.fqn == "model.w")]
    blob = _record(key, size)
    with open(src / info.relative_path, "ab") as f:  # appended; the metadata points at it
        info.offset, info.length = f.tell(), len(blob)
        f.write(blob)
    (src / ".metadata").write_bytes(pickle.dumps(md))
    out = tmp_path / "o.safetensors"
    refused(
        tmp_path, ["apply", str(src), "--rule", "v=zeros", "-o", str(out)], 1, ".distcp", fragment
    )


def _chunks_int(md: object) -> None:
    md.state_dict_metadata["model.model.norm.weight"].chunks = 5  # type: ignore[attr-defined]


def _chunks_not_chunks(md: object) -> None:
    md.state_dict_metadata["model.model.norm.weight"].chunks = [1, 2]  # type: ignore[attr-defined]


def _two_names_nest_alike(md: object) -> None:
    md.planner_data["model.model.norm.weight"] = ("model", "lm_head.weight")  # type: ignore[attr-defined]


def _a_name_below_a_tensor(md: object) -> None:
    md.planner_data["model.model.norm.weight"] = ("model", "lm_head.weight", "x")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (_chunks_int, "chunks"),
        (_chunks_not_chunks, "chunks"),
        (_two_names_nest_alike, "lm_head.weight"),
        (_a_name_below_a_tensor, "lm_head.weight"),
    ],
)
def test_malformed_metadata_is_a_corrupt_checkpoint(dcp_root, tmp_path, edit, fragment):
    """Chunks that are not a list of chunks were an internal error; two entries nested at one
    name (or one below another's tensor) silently lost a tensor (34 of 35 written, exit 0)."""
    src = tmp_path / "src"
    shutil.copytree(dcp_root / "single-fp32", src)
    md = pickle.loads((src / ".metadata").read_bytes())
    edit(md)
    (src / ".metadata").write_bytes(pickle.dumps(md))
    out = tmp_path / "o.safetensors"
    for args in (
        ["inspect", str(src)],
        ["apply", str(src), "--rule", "*.bias=zeros", "-o", str(out)],
    ):
        refused(tmp_path, args, 1, str(src), fragment)


def test_a_dcp_directory_without_its_metadata_says_so(dcp_root, tmp_path):
    """torch writes `.metadata` last: a save that never finished leaves the `.distcp` files
    alone. The error says that (it said no model.safetensors was found), exit 1."""
    src = tmp_path / "src"
    shutil.copytree(dcp_root / "gloo-fp32", src)
    (src / ".metadata").unlink()
    refused(tmp_path, ["inspect", str(src)], 1, "__0_0.distcp", ".metadata")
