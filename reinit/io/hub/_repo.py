"""Hugging Face Hub access for `hf://OWNER/NAME[@REVISION][/SUBFOLDER]` sources (docs/reference.md, docs/guide/transplant.md).

This module (`HubRepo`) and its helpers are the only code that talks to the Hub, always through
`huggingface_hub` (tested with 2.4.0): `hub_url` parses the URL with `parse_hf_uri`, `hub_env`
reads the environment, `hub_errors` words every failure, and `HubRepo` uses
`HfApi.model_info` / `HfApi.resolve_revision` for the file list and the commit, `hf_hub_download`
for files. Nothing is downloaded until asked for: the directory reader
asks for the index first and then only the shards that hold the tensors it needs.

Chosen behaviour:

- `parse_hf_url` accepts the library's `hf://` grammar restricted to model repositories (an explicit
  `hf://models/` prefix is allowed; `datasets/`, `spaces/`, `buckets/` are usage errors, as are a
  missing owner or name, an empty revision, and `.`/`..` in the subfolder). `refs/pr/N` revisions work.
- A revision must be a safe git ref (`confine.check_revision`: no `..` part, `%`, leading `/`,
  backslash or control character), checked before huggingface_hub sees it: it writes the revision
  as a path under the cache's `refs/`, so `@..%2F..%2Fx` would otherwise write outside the cache.
- `fetch` takes only plain relative names (`confine.check_relname`, an `UnsafePathError` otherwise:
  no leading `/` is stripped, no backslash converted) and never returns a non-regular file.
- A `HubRepo` resolves its revision to one commit on first use and pins every listing and download to
  that commit, so an index and its shards always come from the same snapshot. Online, one
  `model_info` call gives the commit and the file list (no retries, timeout `HF_HUB_ETAG_TIMEOUT`,
  default 10 s); a branch or tag is then also written to the cache's `refs/` (via `resolve_revision`)
  so that a later offline run finds it.
- Offline (`HF_HUB_OFFLINE=1`, read both from the environment at call time and from
  `huggingface_hub.constants`, which reads it at import time): the revision is resolved from the cache's
  `refs/`, `list_files` lists the cached snapshot (files downloaded before, not the whole repo) and
  `fetch` only reads the cache.
- Hub unreachable (connection refused, timeout, proxy error, HTTP 429/5xx) while online: if the revision
  is cached, the repo falls back to the cache exactly as in offline mode and logs one warning on the
  `reinit.hub` logger (`fallback_reason` says why); otherwise it is a `HubError`.
- `HF_HOME` / `HF_HUB_CACHE` and `HF_ENDPOINT` are read from the environment when the `HubRepo` is
  created (falling back to `huggingface_hub.constants`), so setting them after `huggingface_hub` was
  imported still works; `HF_TOKEN` is read by the library at each request. `HF_HUB_DOWNLOAD_TIMEOUT`
  is only read by the library, at import time.
- `list_files` leaves out hidden files (`.gitattributes`, anything under a `.dir/`), as the local
  directory reader does; `fetch` still gets them when asked by name.
- `fetch` returns the snapshot path (`.../snapshots/<commit>/<file>`, usually a symlink into `blobs/`),
  which keeps the file's real name and extension.
- Progress bars are huggingface_hub's own (tqdm on stderr, hidden when stderr is not a terminal or
  `HF_HUB_DISABLE_PROGRESS_BARS=1`); `progress=False` silences them for this repo only, without
  touching the library's global switch.
- Every failure is a `HubError` (exit code 1) with a one-line message that starts with the repo URL,
  names the revision or file and says what to do; never a library exception or traceback.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from reinit.errors import HubError, UnsafePathError
from reinit.io.confine import check_relname, check_revision, local_file
from reinit.io.hub._env import (
    clean_name,
    default_cache_dir,
    file_listing,
    hidden,
    hub_timeout,
    in_library_call,
    is_unreachable,
    offline_mode,
    quiet_bar,
    reason_of,
    top_level,
)
from reinit.io.hub._errors import HubMessages
from reinit.io.hub._retry import RetryBudgetSpent, library_call
from reinit.io.hub._url import COMMIT_RE, HubRef
from reinit.io.stall import HubStalled, call_with_stall_timeout, pinging_bar, stall_timeout

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import HfApi

__all__ = ["HubRepo"]

log = logging.getLogger("reinit.hub")


class HubRepo(HubMessages):
    """A lazily fetched view of one repo snapshot (optionally a subfolder), used by the directory
    reader as a file provider. Nothing touches the network or the cache until `list_files`,
    `exists`, `fetch` or `commit` is called; the first of them pins the revision to one commit."""

    def __init__(
        self, ref: HubRef, progress: bool = True, *, cache_dir: str | os.PathLike | None = None
    ):
        check_revision(ref.revision, ref.url)  # also for a HubRef built by hand
        self.ref = ref
        self.progress = progress
        self.cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.endpoint = (os.environ.get("HF_ENDPOINT") or "").strip().rstrip("/") or None
        self.fallback_reason: str | None = (
            None  # set when the Hub was unreachable and the cache used
        )
        self._offline: bool | None = None
        self._commit: str | None = None
        self._repo_files: list[str] | None = None  # relative to the repo root

    # -- public ------------------------------------------------------------------------------

    @property
    def commit(self) -> str:
        """The 40-hex commit every listing and download of this repo is pinned to."""
        self._resolve()
        assert self._commit is not None
        return self._commit

    @property
    def offline(self) -> bool:
        """True when this repo is served from the local cache only (offline mode or fallback)."""
        self._resolve()
        return bool(self._offline)

    def list_files(self) -> list[str]:
        """Sorted file names (with "/" for nested files) relative to the subfolder, without hidden
        ones (`.gitattributes`, `.cache/...`), like the local directory reader. Online: the whole
        repo at the pinned commit. Offline: the files of the cached snapshot."""
        self._resolve()
        files = self._root_files()
        sub = self.ref.subfolder
        if not sub:
            return list(files)
        prefix = sub + "/"
        inside = [f[len(prefix) :] for f in files if f.startswith(prefix)]
        if not inside:
            if self._offline:
                raise HubError(self._not_cached_message(f"subfolder '{sub}'", files=files))
            raise HubError(
                f"{self.display}: subfolder '{sub}' not found in {self.ref.repo_id}"
                f"{self._at_revision()}{file_listing(top_level(files), 'top-level entries')}:"
                " fix the path after the repo name"
            )
        return inside

    def exists(self, filename: str) -> bool:
        """Whether `filename` (relative to the subfolder) is in the repo (offline: in the cache)."""
        return clean_name(filename) in set(self.list_files())

    def fetch(self, filename: str) -> pathlib.Path:
        """Download `filename` (relative to the subfolder) into the Hugging Face cache if needed and
        return its local path. Offline, only the cache is read."""
        name = check_relname(filename, self.display, "asks for the file")
        self._resolve()
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import tqdm as hf_tqdm

        def download(ping: Callable[[], None]) -> str:
            with library_call():  # in the worker thread: the retry state is per thread
                return hf_hub_download(
                    self.ref.repo_id,
                    name,
                    subfolder=self.ref.subfolder,
                    revision=self._commit,
                    cache_dir=str(self.cache_dir),
                    endpoint=self.endpoint,
                    local_files_only=bool(self._offline),
                    etag_timeout=hub_timeout(),
                    tqdm_class=pinging_bar(hf_tqdm if self.progress else quiet_bar(), ping),
                    library_name="reinit",
                )

        try:
            # no library chatter on stderr, retries bounded (hub_retry.py); a server that
            # trickles bytes is cut off after the stall timeout (stall.py)
            path = call_with_stall_timeout(download, stall_timeout())
        except HubStalled as exc:
            raise self._stalled(exc, f"downloading '{name}'") from None
        except (Exception, RetryBudgetSpent) as exc:
            self._refuse_dangling(name)
            raise self._error(exc, filename=name) from None
        if not os.path.isfile(path):  # a FIFO or device planted in the cache is never opened
            raise UnsafePathError(
                f"{self.display}: the cached {name} ({path}) is not a regular file; "
                "delete it from the cache and download again"
            )
        # the rule a snapshot folder given as a local path follows: a link may lead into the
        # snapshot or that repo's blobs/, never out of the cache (a hostile or shared cache)
        rel = f"{self.ref.subfolder}/{name}" if self.ref.subfolder else name
        local_file(self._confined_snapshot(), rel, self.display, "holds")
        return pathlib.Path(path)

    def _refuse_dangling(self, name: str) -> None:
        """A cached file whose link leads to a blob no longer there (a cache cleaned by hand, a
        disk that filled up): offline, say so and how to get it back, not 'no weights'."""
        rel = f"{self.ref.subfolder}/{name}" if self.ref.subfolder else name
        pointer = self._snapshot_dir() / rel
        if self._offline and os.path.islink(pointer) and not os.path.exists(pointer):
            raise HubError(
                f"{self.display}: the cached {name} ({pointer}) is a link to a file that is no "
                f"longer there; delete the link and run once online or {self._download_hint(name)}"
            )

    def _confined_snapshot(self) -> pathlib.Path:
        """The snapshot folder, refused when it (or `snapshots/`) is a link out of its repo's
        cache folder: its files would then be any local folder's, read as this repo's."""
        snapshot = self._snapshot_dir()
        real, repo = os.path.realpath(snapshot), os.path.realpath(snapshot.parent.parent)
        if not real.startswith(repo.rstrip(os.sep) + os.sep):
            raise UnsafePathError(
                f"{self.display}: the cached snapshot {snapshot} is a link to {real}, outside "
                "the repo's cache folder; refusing to read it: delete it from the cache and "
                "download again"
            )
        return snapshot

    def __repr__(self) -> str:
        return f"HubRepo({self.display!r})"

    # -- resolution --------------------------------------------------------------------------

    def _resolve(self) -> None:
        if self._commit is not None:
            return
        try:
            with library_call():  # no library chatter on stderr; retries bounded (hub_retry.py)
                self._resolve_now()
        except RetryBudgetSpent as exc:
            raise self._error(exc) from None

    def _resolve_now(self) -> None:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, library_name="reinit")
        if offline_mode():
            self._offline = True
            self._commit = self._commit_from_cache(api)
            return
        try:
            info = call_with_stall_timeout(
                lambda ping: in_library_call(
                    lambda: api.model_info(
                        self.ref.repo_id, revision=self.ref.revision, timeout=hub_timeout()
                    )
                ),
                stall_timeout(),
            )
        except HubStalled as exc:
            raise self._stalled(exc, "listing its files") from None
        except Exception as exc:
            if not is_unreachable(exc):
                raise self._error(exc) from None
            self.fallback_reason = reason_of(exc)
            self._offline = True
            self._commit = self._commit_from_cache(api, unreachable=self.fallback_reason)
            log.warning(
                "%s: cannot reach the Hub at %s (%s); using the cached snapshot %s"
                " (set HF_HUB_OFFLINE=1 to skip the Hub)",
                self.display,
                self._endpoint_text(),
                self.fallback_reason,
                self._commit[:12],
            )
            return
        commit = getattr(info, "sha", None)
        if not commit:
            raise HubError(
                f"{self.display}: the Hub at {self._endpoint_text()} returned no commit for"
                f"{self._at_revision() or ' the default branch'}: check HF_ENDPOINT"
            )
        self._offline = False
        self._commit = commit
        self._repo_files = sorted(
            s.rfilename
            for s in (getattr(info, "siblings", None) or [])
            if s.rfilename and not hidden(s.rfilename)
        )
        if self.ref.revision is None or not COMMIT_RE.fullmatch(self.ref.revision):
            # Record branch/tag -> commit in the cache's refs/ so a later offline run finds it.
            try:
                api.resolve_revision(
                    self.ref.repo_id, revision=self.ref.revision, cache_dir=self.cache_dir
                )
            except Exception as exc:  # best effort: the download itself does not need it
                log.debug("%s: could not record the revision in the cache: %s", self.display, exc)

    def _commit_from_cache(self, api: HfApi, unreachable: str | None = None) -> str:
        from huggingface_hub.errors import RevisionResolutionError

        try:
            resolved = api.resolve_revision(
                self.ref.repo_id,
                revision=self.ref.revision,
                cache_dir=self.cache_dir,
                local_files_only=True,
            )
        except RevisionResolutionError:
            what = f"revision '{self.ref.revision}'" if self.ref.revision else "the repository"
            raise HubError(self._not_cached_message(what, unreachable=unreachable)) from None
        except Exception as exc:
            raise self._error(exc) from None
        return str(resolved.resolved)

    def _known_files(self) -> list[str] | None:
        """Files of the pinned snapshot relative to the subfolder, for hints; never raises."""
        try:
            files = self._root_files()
        except Exception:
            return None
        sub = self.ref.subfolder
        if not sub:
            return files
        prefix = sub + "/"
        return [f[len(prefix) :] for f in files if f.startswith(prefix)]

    def _root_files(self) -> list[str]:
        if self._repo_files is None:
            self._repo_files = self._cached_files()
        return self._repo_files

    def _snapshot_dir(self) -> pathlib.Path:
        from huggingface_hub.file_download import repo_folder_name

        folder = repo_folder_name(repo_id=self.ref.repo_id, repo_type="model")
        return self.cache_dir / folder / "snapshots" / str(self._commit)

    def _cached_files(self) -> list[str]:
        snapshot = self._snapshot_dir()
        if not snapshot.is_dir():
            what = (
                f"revision '{self.ref.revision}' (commit {str(self._commit)[:12]})"
                if self.ref.revision
                else f"commit {str(self._commit)[:12]}"
            )
            raise HubError(self._not_cached_message(what, unreachable=self.fallback_reason))
        files = []
        for root, _dirs, names in os.walk(snapshot):
            for n in names:
                full = os.path.join(root, n)
                # follows the blob symlink; a dangling one is listed, so that fetching it
                # says the blob is gone (`_refuse_dangling`) instead of 'no weights here'
                if os.path.isfile(full) or (os.path.islink(full) and not os.path.exists(full)):
                    rel = pathlib.Path(full).relative_to(snapshot).as_posix()
                    if not hidden(rel):
                        files.append(rel)
        return sorted(files)
