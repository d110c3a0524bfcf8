"""hf:// sources in apply: as a from(...) source and as the main SOURCE, through the real
huggingface_hub resolution code over a seeded cache in a temporary HF_HOME (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import run
from hubcache import C1, C2, closed_port, seed_repo, sharded_repo, single_repo, st_bytes
from safetensors.torch import load_file, save_file

import reinit
from reinit.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def target(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "t.safetensors") -> Path:
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def fake_hub_home() -> Path:
    return Path(os.environ["HF_HOME"])


def snapshot(home: Path, repo_id: str, commit: str = C2) -> Path:
    return home / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit


def test_sharded_hub_source_reads_only_the_needed_shard(offline, tmp_path):
    tensors = sharded_repo(offline, tmp_path)  # a.* in shard 1, b.weight in shard 2
    (snapshot(offline, "acme/sharded") / SHARD2).unlink()  # never downloaded
    tgt = target(tmp_path, {"enc.a.weight": torch.zeros(4, 4), "enc.a.bias": torch.ones(4)})
    out = tmp_path / "o.safetensors"
    rep = reinit.apply(tgt, ["enc.*=from(hf://acme/sharded, key={1})"], out)
    o = load_file(out)
    assert torch.equal(o["enc.a.weight"], tensors["a.weight"])
    assert torch.equal(o["enc.a.bias"], tensors["a.bias"])
    assert rep.entry("enc.a.weight").source == "hf://acme/sharded:a.weight"

    # the unneeded shard is cached but corrupt: still never opened
    snap = snapshot(offline, "acme/sharded")
    (snap / SHARD2).write_bytes(b"\x00garbage, not safetensors")
    out2 = tmp_path / "o2.safetensors"
    reinit.apply(tgt, ["enc.*=from(hf://acme/sharded, key={1})"], out2)
    assert out2.read_bytes() == out.read_bytes()

    # asking for a tensor of the missing shard names it and says what to do
    (snap / SHARD2).unlink()
    res = CliRunner().invoke(
        main, ["apply", str(tgt), "-r", "enc.a.weight=from(hf://acme/sharded, key=b.weight)"]
    )
    assert res.exit_code == 1, res.output
    assert f"'{SHARD2}'" in res.output and "HF_HUB_OFFLINE=1" in res.output


def test_online_downloads_index_then_only_the_needed_shard(fake_hub, tmp_path, monkeypatch):
    s1 = {"a.weight": torch.randn(4, 4), "a.bias": torch.zeros(4)}
    s2 = {"b.weight": torch.randn(2, 4)}
    index = {
        "metadata": {},
        "weight_map": {"a.weight": SHARD1, "a.bias": SHARD1, "b.weight": SHARD2},
    }
    fake_hub.add(
        "acme/private",
        {
            SHARD1: st_bytes(tmp_path, s1),
            SHARD2: st_bytes(tmp_path, s2),
            "model.safetensors.index.json": json.dumps(index).encode(),
            "pytorch_model.bin": b"never read: safetensors are preferred",
            "config.json": b"{}",
        },
        token="hf_secret",
    )
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    tgt = target(tmp_path, {"a.weight": torch.zeros(4, 4)})
    reinit.apply(tgt, ["a.weight=from(hf://acme/private)"], tmp_path / "o.safetensors")
    assert torch.equal(load_file(tmp_path / "o.safetensors")["a.weight"], s1["a.weight"])
    fetched = {
        path.split("/resolve/", 1)[1].split("/", 1)[1]
        for _, path in fake_hub.requests
        if "/resolve/" in path
    }
    assert fetched == {"model.safetensors.index.json", SHARD1}
    assert set(fake_hub.auth_seen) == {"Bearer hf_secret"}
    snap = snapshot(fake_hub_home(), "acme/private")
    assert sorted(p.name for p in snap.iterdir()) == [
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
    ]


def test_single_file_hub_source_at_a_revision(offline, tmp_path):
    old = {"emb.weight": torch.full((3, 4), 2.0)}
    seed_repo(
        offline, "acme/tiny-bert", {"model.safetensors": st_bytes(tmp_path, old)}, C1, ("v1",)
    )
    new = single_repo(offline, tmp_path)  # main -> C2
    tgt = target(tmp_path, {"emb.weight": torch.zeros(3, 4), "emb.bias": torch.zeros(3)})
    rep = reinit.apply(
        tgt,
        ["emb.weight=from(hf://acme/tiny-bert@v1)", "emb.bias=from(hf://acme/tiny-bert)"],
        tmp_path / "o.safetensors",
    )
    o = load_file(tmp_path / "o.safetensors")
    assert torch.equal(o["emb.weight"], old["emb.weight"])
    assert torch.equal(o["emb.bias"], new["emb.bias"])
    assert rep.entry("emb.weight").source == "hf://acme/tiny-bert@v1:emb.weight"


def test_hub_prefers_safetensors_over_bin(offline, tmp_path):
    good = {"w": torch.arange(4.0)}
    seed_repo(
        offline,
        "acme/both",
        {"model.safetensors": st_bytes(tmp_path, good), "pytorch_model.bin": b"not a pickle"},
    )
    tgt = target(tmp_path, {"w": torch.zeros(4)})
    reinit.apply(tgt, ["w=from(hf://acme/both)"], tmp_path / "o.safetensors")
    assert torch.equal(load_file(tmp_path / "o.safetensors")["w"], good["w"])


def test_hub_bin_only_repo(offline, tmp_path):
    sd = {"w": torch.arange(4.0), "v": torch.ones(2)}
    buf = tmp_path / "pm.bin"
    torch.save(sd, buf)
    seed_repo(offline, "acme/old", {"pytorch_model.bin": buf.read_bytes(), "config.json": b"{}"})
    tgt = target(tmp_path, {"w": torch.zeros(4)})
    reinit.apply(tgt, ["w=from(hf://acme/old)"], tmp_path / "o.safetensors")
    assert torch.equal(load_file(tmp_path / "o.safetensors")["w"], sd["w"])


def test_hub_repo_as_main_source(offline, tmp_path, monkeypatch):
    tensors = sharded_repo(offline, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = run("apply", "hf://acme/sharded", "-r", "b.weight=zeros", "-q")
    assert res.exit_code == 0, res.output
    out = work / "sharded-reinit"
    assert listing(out) == sorted(
        ["config.json", "model.safetensors.index.json", "reinit-report.json", SHARD1, SHARD2]
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"a.weight": SHARD1, "a.bias": SHARD1, "b.weight": SHARD2}
    assert torch.equal(load_file(out / SHARD1)["a.weight"], tensors["a.weight"])
    assert not load_file(out / SHARD2)["b.weight"].any()
    report = json.loads((out / "reinit-report.json").read_text())
    assert report["source"] == "hf://acme/sharded"
    # the cache itself is untouched
    assert torch.equal(
        load_file(snapshot(offline, "acme/sharded") / SHARD2)["b.weight"], tensors["b.weight"]
    )


def test_not_cached_offline_is_a_clear_error_and_writes_nothing(offline, tmp_path, monkeypatch):
    tgt = target(tmp_path, {"w": torch.zeros(4)})
    before = listing(tmp_path)
    monkeypatch.chdir(tmp_path)
    for args in (
        [str(tgt), "-r", "w=from(hf://acme/never-seen)"],
        ["hf://acme/never-seen", "-r", "*=zeros"],
    ):
        res = run("apply", *args)
        assert res.exit_code == 1, res.output
        line = res.output.strip()
        assert "\n" not in line and line.startswith("error: hf://acme/never-seen: ")
        assert "not in the local cache" in line and "HF_HUB_OFFLINE=1" in line
        assert "hf download acme/never-seen" in line
        assert "Traceback" not in res.output
        assert listing(tmp_path) == before


def test_cli_subprocess_with_offline_env(tmp_path):
    """HF_HOME and HF_HUB_OFFLINE set before Python starts, as a user's shell would."""
    home = tmp_path / "home"
    tensors = sharded_repo(home, tmp_path)
    (snapshot(home, "acme/sharded") / SHARD2).unlink()
    tgt = target(tmp_path, {"a.weight": torch.zeros(4, 4)})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_HOME=str(home),
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        PYTHONPATH=str(ROOT),
    )
    cmd = [sys.executable, "-m", "reinit", "apply", str(tgt), "-o", "o.safetensors", "-q"]
    proc = subprocess.run(
        [*cmd, "-r", "a.weight=from(hf://acme/sharded)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(load_file(tmp_path / "o.safetensors")["a.weight"], tensors["a.weight"])
    proc = subprocess.run(
        [*cmd, "--overwrite", "-r", "a.weight=from(hf://acme/other)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: hf://acme/other: ") and "Traceback" not in proc.stderr
    assert "HF_HUB_OFFLINE=1" in proc.stderr
    assert torch.equal(load_file(tmp_path / "o.safetensors")["a.weight"], tensors["a.weight"])


@pytest.mark.parametrize("url", ["hf://acme", "hf://datasets/acme/data"])
def test_bad_hub_url_in_from_is_a_usage_error(offline, tmp_path, url):
    tgt = target(tmp_path, {"w": torch.zeros(4)})
    res = run("apply", str(tgt), "-r", f"w=from({url})")
    assert res.exit_code == 2, res.output
    assert (
        url in res.output and "hf://OWNER/NAME" in res.output or "model repositories" in res.output
    )


def test_hub_subfolder_source(offline, tmp_path):
    enc = {"embeddings.weight": torch.arange(8.0).reshape(2, 4)}
    seed_repo(
        offline,
        "acme/pipe",
        {
            "model_index.json": b"{}",
            "text_encoder/model.safetensors": st_bytes(tmp_path, enc),
            "unet/model.safetensors": b"never read",
        },
    )
    tgt = target(tmp_path, {"te.embeddings.weight": torch.zeros(2, 4)})
    rep = reinit.apply(
        tgt, ["te.*=from(hf://acme/pipe/text_encoder, key={1})"], tmp_path / "o.safetensors"
    )
    o = load_file(tmp_path / "o.safetensors")
    assert torch.equal(o["te.embeddings.weight"], enc["embeddings.weight"])
    assert rep.entry("te.embeddings.weight").source == (
        "hf://acme/pipe/text_encoder:embeddings.weight"
    )
