"""Tests of reinit.io.hub against the real huggingface_hub library.

No test reaches the internet. A real Hugging Face cache is seeded in a temporary HF_HOME (refs/,
snapshots/ with relative symlinks into blobs/, exactly as hf_hub_download lays it out) and read in
offline mode; connection errors use a closed loopback port; the online paths use a tiny fake Hub
served on 127.0.0.1 that answers the few routes huggingface_hub calls (model_info, HEAD/GET resolve)
with the Hub's headers. The library itself is never mocked; only its config constants are set.

Internal: also tests reinit.io.hub, reinit.io.hub._url, reinit.tools.audit directly (not the
`reinit` API).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch
from hubcache import (
    C1,
    C2,
    assert_same,
    closed_port,
    seed_repo,
    sharded_repo,
    single_repo,
    st_bytes,
)
from safetensors.torch import load_file

from reinit.errors import HubError, UnsafePathError, UsageError
from reinit.io.hub import HubRepo, is_hf_url, parse_hf_url
from reinit.io.hub._url import HubRef

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# URL parsing


@pytest.mark.parametrize(
    "text, repo_id, revision, subfolder, canonical",
    [
        ("hf://acme/tiny-bert", "acme/tiny-bert", None, None, "hf://acme/tiny-bert"),
        ("hf://acme/tiny-bert/", "acme/tiny-bert", None, None, "hf://acme/tiny-bert"),
        ("hf://acme/tiny-bert@v1.0", "acme/tiny-bert", "v1.0", None, "hf://acme/tiny-bert@v1.0"),
        (f"hf://acme/m@{C1}", "acme/m", C1, None, f"hf://acme/m@{C1}"),
        ("hf://acme/m/text_encoder", "acme/m", None, "text_encoder", "hf://acme/m/text_encoder"),
        ("hf://acme/m@dev/a/b/", "acme/m", "dev", "a/b", "hf://acme/m@dev/a/b"),
        ("hf://acme/m@refs/pr/3/unet", "acme/m", "refs/pr/3", "unet", "hf://acme/m@refs/pr/3/unet"),
        ("hf://acme/m@feat%2Fx/unet", "acme/m", "feat/x", "unet", "hf://acme/m@feat%2Fx/unet"),
        ("hf://models/acme/m", "acme/m", None, None, "hf://acme/m"),
    ],
)
def test_parse_good_forms(text, repo_id, revision, subfolder, canonical):
    ref = parse_hf_url(text)
    assert ref == HubRef(repo_id, revision, subfolder)
    assert ref.url == canonical
    assert parse_hf_url(ref.url) == ref  # the canonical form round-trips
    assert ref.name == repo_id.split("/")[1]


@pytest.mark.parametrize(
    "text",
    [
        "hf://onlyname",
        "hf://",
        "hf://acme/",
        "hf:///name",
        "hf://acme/m@",
        "hf://acme/m@/sub",
        "hf://acme/m//sub",
        "hf://ac me/m",
        "hf://acme/m/../etc",
        "hf://acme/m/./x",
        "hf://datasets/acme/data",
        "hf://spaces/acme/demo",
        "acme/m",
    ],
)
def test_parse_bad_forms(text):
    with pytest.raises(UsageError) as info:
        parse_hf_url(text)
    msg = str(info.value)
    assert info.value.exit_code == 2
    assert "\n" not in msg
    assert repr(text) in msg
    assert "hf://OWNER/NAME" in msg or "model repositories" in msg or "'..'" in msg


def test_is_hf_url():
    assert is_hf_url("hf://acme/m")
    assert is_hf_url("hf://onlyname")  # meant as a Hub URL, even if malformed
    assert not is_hf_url("acme/m")
    assert not is_hf_url("https://huggingface.co/acme/m")
    assert not is_hf_url("model.safetensors")


# --------------------------------------------------------------------------------------------------
# offline, from a seeded cache


def test_single_file_repo_offline(offline, tmp_path):
    tensors = single_repo(offline, tmp_path)
    repo = HubRepo(parse_hf_url("hf://acme/tiny-bert"), progress=False)
    assert repo.display == "hf://acme/tiny-bert"
    assert repo.list_files() == ["config.json", "model.safetensors"]
    assert repo.exists("model.safetensors")
    assert not repo.exists("pytorch_model.bin")
    assert repo.commit == C2 and repo.offline

    path = repo.fetch("model.safetensors")
    assert path.name == "model.safetensors"  # the snapshot name, not the blob hash
    assert path.is_relative_to(offline / "hub" / "models--acme--tiny-bert" / "snapshots" / C2)
    assert_same(load_file(str(path)), tensors)
    assert json.loads(repo.fetch("config.json").read_text()) == {"hidden_size": 4}
    assert repo.fetch(".gitattributes").is_file()  # hidden from the listing, still fetchable


def test_sharded_repo_offline(offline, tmp_path):
    tensors = sharded_repo(offline, tmp_path)
    repo = HubRepo(parse_hf_url("hf://acme/sharded"), progress=False)
    assert repo.exists("model.safetensors.index.json")
    assert not repo.exists("model.safetensors")
    index = json.loads(repo.fetch("model.safetensors.index.json").read_text())
    loaded = {}
    for shard in sorted(set(index["weight_map"].values())):
        loaded.update(load_file(str(repo.fetch(shard))))
    assert_same(loaded, tensors)


def test_subfolder_offline(offline, tmp_path):
    enc = {"w": torch.full((2, 2), 7.0)}
    seed_repo(
        offline,
        "acme/pipe",
        {
            "model_index.json": b"{}",
            "text_encoder/model.safetensors": st_bytes(tmp_path, enc),
            "text_encoder/config.json": b"{}",
            "unet/model.safetensors": st_bytes(tmp_path, {"u": torch.zeros(1)}),
        },
    )
    repo = HubRepo(parse_hf_url("hf://acme/pipe/text_encoder"), progress=False)
    assert repo.list_files() == ["config.json", "model.safetensors"]
    assert repo.exists("model.safetensors") and not repo.exists("model_index.json")
    path = repo.fetch("model.safetensors")
    assert path.parent.name == "text_encoder"
    assert_same(load_file(str(path)), enc)

    with pytest.raises(HubError) as info:
        HubRepo(parse_hf_url("hf://acme/pipe/vae")).list_files()
    assert "hf://acme/pipe/vae" in str(info.value) and "'vae'" in str(info.value)


def _two_commit_repo(home: Path, tmp_path: Path) -> tuple[dict, dict]:
    old = {"w": torch.zeros(2, 2)}
    new = {"w": torch.ones(2, 2)}
    seed_repo(home, "acme/evolving", {"model.safetensors": st_bytes(tmp_path, old)}, C1, ("dev",))
    seed_repo(home, "acme/evolving", {"model.safetensors": st_bytes(tmp_path, new)}, C2, ("main",))
    return old, new


def test_revision_as_commit_hash(offline, tmp_path):
    old, new = _two_commit_repo(offline, tmp_path)
    at_old = HubRepo(parse_hf_url(f"hf://acme/evolving@{C1}"), progress=False)
    assert at_old.commit == C1
    assert_same(load_file(str(at_old.fetch("model.safetensors"))), old)
    head = HubRepo(parse_hf_url("hf://acme/evolving"), progress=False)
    assert_same(load_file(str(head.fetch("model.safetensors"))), new)

    missing = "f" * 40
    with pytest.raises(HubError) as info:
        HubRepo(parse_hf_url(f"hf://acme/evolving@{missing}")).list_files()
    assert f"hf://acme/evolving@{missing}" in str(info.value)


def test_revision_as_branch_name(offline, tmp_path):
    old, _new = _two_commit_repo(offline, tmp_path)
    dev = HubRepo(parse_hf_url("hf://acme/evolving@dev"), progress=False)
    assert dev.commit == C1
    assert dev.list_files() == ["model.safetensors"]
    assert_same(load_file(str(dev.fetch("model.safetensors"))), old)

    with pytest.raises(HubError) as info:
        HubRepo(parse_hf_url("hf://acme/evolving@nope")).fetch("model.safetensors")
    msg = str(info.value)
    assert info.value.exit_code == 1
    assert msg.startswith("hf://acme/evolving@nope: ") and "revision 'nope'" in msg
    assert "HF_HUB_OFFLINE=1" in msg and "--revision nope" in msg


def test_fetch_file_not_cached(offline, tmp_path):
    single_repo(offline, tmp_path)
    repo = HubRepo(parse_hf_url("hf://acme/tiny-bert"), progress=False)
    with pytest.raises(HubError) as info:
        repo.fetch("tokenizer.json")
    msg = str(info.value)
    assert info.value.exit_code == 1
    assert "\n" not in msg
    assert msg.startswith("hf://acme/tiny-bert: ")
    assert "'tokenizer.json'" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "hf download acme/tiny-bert tokenizer.json" in msg
    assert "model.safetensors" in msg  # what is cached


def test_repo_not_cached(offline):
    repo = HubRepo(parse_hf_url("hf://acme/never-seen"), progress=False)
    for call in (repo.list_files, lambda: repo.fetch("model.safetensors")):
        with pytest.raises(HubError) as info:
            call()
        msg = str(info.value)
        assert info.value.exit_code == 1
        assert msg.startswith("hf://acme/never-seen: ")
        assert "not in the local cache" in msg and "HF_HUB_OFFLINE=1" in msg
        assert "`hf download acme/never-seen`" in msg
        assert str(offline / "hub") in msg


def test_fetch_rejects_paths_outside_the_repo(offline, tmp_path):
    single_repo(offline, tmp_path)
    repo = HubRepo(parse_hf_url("hf://acme/tiny-bert"), progress=False)
    for bad in ("../../../etc/passwd", "a/../../x", "", "/etc/passwd", "a\\..\\b", "a\x00b"):
        with pytest.raises(UnsafePathError, match="not a file inside the model folder"):
            repo.fetch(bad)


def test_offline_env_set_after_import_is_honoured(hf_home, tmp_path, monkeypatch):
    """huggingface_hub read HF_HUB_OFFLINE at import (False here); reinit still reads the env."""
    single_repo(hf_home, tmp_path)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = HubRepo(parse_hf_url("hf://acme/tiny-bert"), progress=False)
    assert repo.offline and repo.fallback_reason is None
    assert repo.fetch("model.safetensors").is_file()
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1 is set"):
        repo.fetch("missing.bin")


def test_offline_env_set_before_import_subprocess(tmp_path):
    """The CLI case: HF_HUB_OFFLINE=1 and HF_HOME set before Python starts."""
    home = tmp_path / "home"
    tensors = single_repo(home, tmp_path)
    script = textwrap.dedent(
        """
        import json, sys
        import huggingface_hub.constants as c
        from reinit.errors import HubError
        from reinit.io.hub import HubRepo
        from reinit.io.hub import parse_hf_url
        repo = HubRepo(parse_hf_url("hf://acme/tiny-bert"), progress=False)
        out = {"constant": c.HF_HUB_OFFLINE, "files": repo.list_files(),
               "path": str(repo.fetch("model.safetensors"))}
        try:
            repo.fetch("nope.bin")
        except HubError as e:
            out["error"] = str(e)
        print(json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_HOME=str(home),
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["constant"] is True
    assert out["files"] == ["config.json", "model.safetensors"]
    assert Path(out["path"]).is_relative_to(home / "hub")
    assert_same(load_file(out["path"]), tensors)
    assert "'nope.bin'" in out["error"] and "HF_HUB_OFFLINE=1" in out["error"]


# --------------------------------------------------------------------------------------------------
# online, Hub unreachable (closed loopback port)


def test_unreachable_hub_and_not_cached(online):
    repo = HubRepo(parse_hf_url("hf://acme/tiny-bert"), progress=False)
    start = time.monotonic()
    with pytest.raises(HubError) as info:
        repo.fetch("model.safetensors")
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert info.value.exit_code == 1
    assert "\n" not in msg
    assert msg.startswith("hf://acme/tiny-bert: cannot reach the Hub at http://127.0.0.1:")
    assert "HF_ENDPOINT" in msg and "not in the local cache" in msg


def test_unreachable_hub_falls_back_to_cache(online, tmp_path, caplog):
    tensors = single_repo(online, tmp_path)
    repo = HubRepo(parse_hf_url("hf://acme/tiny-bert"), progress=False)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="reinit.hub"):
        assert repo.list_files() == ["config.json", "model.safetensors"]
    assert repo.offline and repo.fallback_reason and "Connect" in repo.fallback_reason
    assert "cannot reach the Hub" in caplog.text and C2[:12] in caplog.text
    assert_same(load_file(str(repo.fetch("model.safetensors"))), tensors)
    with pytest.raises(HubError) as info:  # not cached: no retry loop, a clear error
        repo.fetch("tokenizer.json")
    assert time.monotonic() - start < 10
    assert "cannot reach the Hub" in str(info.value) and "'tokenizer.json'" in str(info.value)


# --------------------------------------------------------------------------------------------------
# online, against a fake Hub on 127.0.0.1


def test_online_download_then_offline_reuse(fake_hub, online, tmp_path, monkeypatch):
    tensors = {"w": torch.randn(3, 3)}
    fake_hub.add(
        "acme/remote",
        {
            "config.json": b"{}",
            "model.safetensors": st_bytes(tmp_path, tensors),
            "sub/extra.txt": b"x",
            ".gitattributes": b"",
        },
    )
    repo = HubRepo(parse_hf_url("hf://acme/remote"), progress=False)
    assert repo.list_files() == ["config.json", "model.safetensors", "sub/extra.txt"]
    assert not repo.offline and repo.commit == C2
    path = repo.fetch("model.safetensors")
    assert_same(load_file(str(path)), tensors)
    repo_dir = online / "hub" / "models--acme--remote"
    assert path.is_relative_to(repo_dir / "snapshots" / C2)
    assert (repo_dir / "refs" / "main").read_text().strip() == C2  # a later offline run finds it
    assert all(a is None for a in fake_hub.auth_seen)  # no token configured, none sent

    # The Hub goes away: offline mode serves what was downloaded, and only that.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    fake_hub.close()
    again = HubRepo(parse_hf_url("hf://acme/remote"), progress=False)
    assert again.list_files() == ["model.safetensors"]
    assert_same(load_file(str(again.fetch("model.safetensors"))), tensors)


def test_online_subfolder_and_revision(fake_hub, tmp_path):
    old = {"w": torch.zeros(1)}
    fake_hub.add(
        "acme/pipe",
        {"unet/model.safetensors": st_bytes(tmp_path, old), "model_index.json": b"{}"},
        commit=C1,
        branches={"main": C1, "v1": C1},
    )
    repo = HubRepo(parse_hf_url("hf://acme/pipe@v1/unet"), progress=False)
    assert repo.list_files() == ["model.safetensors"] and repo.commit == C1
    assert_same(load_file(str(repo.fetch("model.safetensors"))), old)
    with pytest.raises(HubError) as info:
        HubRepo(parse_hf_url("hf://acme/pipe/vae")).list_files()
    assert "subfolder 'vae' not found" in str(info.value) and "unet/" in str(info.value)


def test_online_error_mapping(fake_hub, tmp_path, monkeypatch):
    fake_hub.add("acme/present", {"model.safetensors": b"x", "config.json": b"{}"})
    fake_hub.add("acme/gated", {"model.safetensors": b"x"}, gated=True)
    fake_hub.add("acme/private", {"model.safetensors": b"x"}, token="hf_good")

    def error(url, filename="model.safetensors"):
        with pytest.raises(HubError) as info:
            HubRepo(parse_hf_url(url), progress=False).fetch(filename)
        assert info.value.exit_code == 1
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(url + ": ")
        return msg

    msg = error("hf://acme/absent")
    assert "repository acme/absent not found" in msg and "HF_TOKEN" in msg
    msg = error("hf://acme/present@nope")
    assert "revision 'nope' not found" in msg
    msg = error("hf://acme/present", "tokenizer.json")
    assert "'tokenizer.json' not found" in msg and "config.json, model.safetensors" in msg
    msg = error("hf://acme/gated")
    assert "acme/gated is a gated repository" in msg and "not found" not in msg
    assert "accept its conditions" in msg and "HF_TOKEN" in msg and "hf auth login" in msg

    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    msg = error("hf://acme/private")
    assert "401" in msg and "HF_TOKEN" in msg
    assert "Bearer hf_bad" in fake_hub.auth_seen  # HF_TOKEN read at call time and sent

    monkeypatch.setenv("HF_TOKEN", "hf_good")
    ok = HubRepo(parse_hf_url("hf://acme/private"), progress=False)
    assert ok.fetch("model.safetensors").read_bytes() == b"x"


def test_quiet_silences_the_hubs_download_bar(fake_hub, tmp_path, capfd, monkeypatch):
    """`progress=False` (the CLI's --quiet) reaches the Hub's own bars, not only reinit's."""
    from reinit.tools.audit import report_checkpoint

    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub: show bars on a non-terminal too
    tensors = {"w": torch.randn(64, 64)}
    for name in ("acme/loud", "acme/hush"):
        fake_hub.add(name, {"config.json": b"{}", "model.safetensors": st_bytes(tmp_path, tensors)})

    report_checkpoint("hf://acme/hush", progress=False)
    assert "model.safetensors" not in capfd.readouterr().err

    report_checkpoint("hf://acme/loud", progress=True)
    err = capfd.readouterr().err
    assert "model.safetensors" in err  # huggingface_hub's bar names the file it downloads
