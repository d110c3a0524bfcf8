"""A real Hugging Face cache and a fake Hub on 127.0.0.1, for tests that go through the real
huggingface_hub without the internet (shared by test_hub.py and the apply-level hub-fault tests;
the pytest fixtures built on these live in conftest.py)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path
from urllib.parse import unquote

import torch
from safetensors.torch import save_file

C1 = "1" * 40  # an older commit
C2 = "a1b2c3d4e5" * 4  # the commit of main


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def st_bytes(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> bytes:
    path = tmp_path / f"tmp-{len(list(tmp_path.iterdir()))}.safetensors"
    save_file(tensors, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def seed_repo(
    home: Path,
    repo_id: str,
    files: dict[str, bytes],
    commit: str = C2,
    refs: tuple[str, ...] = ("main",),
) -> Path:
    """Lay out one snapshot of `repo_id` the way hf_hub_download does; return the snapshot dir."""
    repo_dir = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    for rel, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = snapshot / rel
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    for ref in refs:
        ref_file = repo_dir / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    return snapshot


def single_repo(home: Path, tmp_path: Path, repo_id: str = "acme/tiny-bert") -> dict:
    tensors = {"emb.weight": torch.arange(12.0).reshape(3, 4), "emb.bias": torch.ones(3)}
    seed_repo(
        home,
        repo_id,
        {
            "model.safetensors": st_bytes(tmp_path, tensors),
            "config.json": b'{"hidden_size": 4}',
            ".gitattributes": b"*.safetensors filter=lfs",
        },
    )
    return tensors


def sharded_repo(home: Path, tmp_path: Path, repo_id: str = "acme/sharded") -> dict:
    s1 = {"a.weight": torch.randn(4, 4), "a.bias": torch.zeros(4)}
    s2 = {"b.weight": torch.randn(2, 4)}
    shard1, shard2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    index = {
        "metadata": {"total_size": 4 * (16 + 4 + 8)},
        "weight_map": {"a.weight": shard1, "a.bias": shard1, "b.weight": shard2},
    }
    seed_repo(
        home,
        repo_id,
        {
            shard1: st_bytes(tmp_path, s1),
            shard2: st_bytes(tmp_path, s2),
            "model.safetensors.index.json": json.dumps(index).encode(),
            "config.json": b"{}",
        },
    )
    return {**s1, **s2}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class FakeHub:
    """Answers the routes huggingface_hub uses, with the Hub's status codes and headers."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.auth_seen: list[str | None] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.faults: dict[str, str] = {}  # file name -> fault mode, see fault()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.handle(self, body=True)

            def do_HEAD(self):
                hub.handle(self, body=False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def add(self, repo_id, files, commit=C2, branches=None, gated=False, token=None):
        self.repos[repo_id] = dict(
            files=files,
            commit=commit,
            branches=branches or {"main": commit},
            gated=gated,
            token=token,
        )

    def fault(self, filename: str, mode: str) -> None:
        """Make every repo misbehave on `filename`: "500" answers HEAD and GET with an internal
        server error; "truncate" answers HEAD normally but a GET announces the full
        Content-Length, sends half the bytes and closes the connection (Range is ignored, like a
        broken proxy, so a resumed download is cut short again)."""
        assert mode in ("500", "truncate"), mode
        self.faults[filename] = mode

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def reply(req, status, body=b"", headers=None, send_body=True):
        req.send_response(status)
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if send_body:
            req.wfile.write(body)

    def handle(self, req, body):
        self.auth_seen.append(req.headers.get("Authorization"))
        self.requests.append((req.command, req.path))
        path = req.path.split("?", 1)[0]
        parts = [unquote(p) for p in path.strip("/").split("/")]
        api = parts[:2] == ["api", "models"]
        if api:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            rev = rest[1] if rest[:1] == ["revision"] else "main"
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo_id, rev, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        else:
            return self.reply(req, 404, send_body=body)
        repo = self.repos.get(repo_id)
        if repo is None:
            return self.reply(req, 404, headers={"X-Error-Code": "RepoNotFound"}, send_body=body)
        if repo["token"] and req.headers.get("Authorization") != f"Bearer {repo['token']}":
            msg = "Invalid credentials in Authorization header"
            return self.reply(req, 401, headers={"X-Error-Message": msg}, send_body=body)
        commit = rev if rev in (repo["commit"], C1) else repo["branches"].get(rev)
        if commit is None:
            return self.reply(
                req, 404, headers={"X-Error-Code": "RevisionNotFound"}, send_body=body
            )
        if api:
            info = {
                "id": repo_id,
                "sha": commit,
                "gated": "auto" if repo["gated"] else False,
                "siblings": [{"rfilename": f} for f in sorted(repo["files"])],
            }
            return self.reply(req, 200, json.dumps(info).encode(), send_body=body)
        if repo["gated"]:
            return self.reply(req, 401, headers={"X-Error-Code": "GatedRepo"}, send_body=body)
        if filename not in repo["files"]:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
            return self.reply(req, 404, headers=headers, send_body=body)
        data = repo["files"][filename]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        fault = self.faults.get(filename)
        if fault == "500":
            return self.reply(req, 500, b"Internal Error", send_body=body)
        if fault == "truncate" and body:
            return self.reply_truncated(req, data, headers)
        return self.reply(req, 200, data, headers=headers, send_body=body)

    @staticmethod
    def reply_truncated(req, data: bytes, headers: dict) -> None:
        req.send_response(200)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(data)))
        req.send_header("Connection", "close")
        req.end_headers()
        req.wfile.write(data[: len(data) // 2])
        req.wfile.flush()
        req.close_connection = True
