"""Hugging Face Hub access for `hf://OWNER/NAME[@REVISION][/SUBFOLDER]` sources (DESIGN §1, §4).

This is the only module that talks to the Hub, always through `huggingface_hub` (tested with 2.4.0):
`parse_hf_uri` for the URL grammar, `HfApi.model_info` / `HfApi.resolve_revision` for the file list and
the commit, `hf_hub_download` for files. Nothing is downloaded until asked for: the directory reader
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
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reinit.errors import HubError, UnsafePathError, UsageError
from reinit.io.confine import check_relname, check_revision
from reinit.io.hub_retry import RetryBudgetSpent, failure_message, library_call

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import HfApi

__all__ = ["HF_SCHEME", "HubRef", "HubRepo", "is_hf_url", "parse_hf_url"]

HF_SCHEME = "hf://"
_GRAMMAR = "hf://OWNER/NAME[@REVISION][/SUBFOLDER]"
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
# Revisions that hold a "/" and that the hf:// grammar keeps verbatim (as huggingface_hub does).
_SPECIAL_REF_RE = re.compile(r"refs/(?:convert/[\w.-]+|pr/\d+)")
_TRUE = {"1", "ON", "YES", "TRUE"}
_SHOW_FILES = 8  # how many existing files an error message lists

log = logging.getLogger("reinit.hub")


# --------------------------------------------------------------------------------------------------
# URL


@dataclass(frozen=True)
class HubRef:
    """A parsed `hf://` URL: a model repository, an optional revision and an optional subfolder."""

    repo_id: str  # "owner/name"
    revision: str | None  # from "@rev"; None = the default branch
    subfolder: str | None  # path after owner/name[@rev]/, without leading or trailing "/"

    @property
    def url(self) -> str:
        """Canonical `hf://owner/name[@rev][/sub]`; `parse_hf_url(ref.url) == ref`."""
        text = HF_SCHEME + self.repo_id
        if self.revision is not None:
            rev = self.revision
            if "/" in rev and not _SPECIAL_REF_RE.fullmatch(rev):
                rev = rev.replace("/", "%2F")
            text += "@" + rev
        if self.subfolder:
            text += "/" + self.subfolder
        return text

    @property
    def name(self) -> str:
        """The repository name without its owner (the default output is `./NAME-reinit/`)."""
        return self.repo_id.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.url


def is_hf_url(text: str) -> bool:
    """True when `text` is meant as a Hub URL (starts with `hf://`); it may still be malformed."""
    return isinstance(text, str) and text.startswith(HF_SCHEME)


def parse_hf_url(text: str) -> HubRef:
    """Parse `hf://OWNER/NAME[@REVISION][/SUBFOLDER]`; a malformed URL is a `UsageError` (exit 2)."""
    if not is_hf_url(text):
        raise UsageError(f"{text!r} is not a Hub URL: expected {_GRAMMAR}")
    from huggingface_hub import parse_hf_uri
    from huggingface_hub.errors import HfUriError

    try:
        uri = parse_hf_uri(text)
    except HfUriError as exc:
        detail = _one_line(getattr(exc, "msg", "") or str(exc))
        raise UsageError(f"bad Hub URL {text!r}: {detail} Expected {_GRAMMAR}") from None
    if uri.type != "model":
        raise UsageError(
            f"bad Hub URL {text!r}: it names a {uri.type}, reinit reads model repositories only"
            f" ({_GRAMMAR})"
        )
    subfolder = uri.path_in_repo.strip("/") or None
    if subfolder is not None and any(part in (".", "..") for part in subfolder.split("/")):
        raise UsageError(
            f"bad Hub URL {text!r}: the subfolder {subfolder!r} must not contain '.' or '..'"
        )
    check_revision(uri.revision, text)
    return HubRef(repo_id=uri.id, revision=uri.revision, subfolder=subfolder)


# --------------------------------------------------------------------------------------------------
# Repository


class HubRepo:
    """A lazily fetched view of one repo snapshot (optionally a subfolder), used by the directory
    reader as a file provider. Nothing touches the network or the cache until `list_files`,
    `exists`, `fetch` or `commit` is called; the first of them pins the revision to one commit."""

    def __init__(
        self, ref: HubRef, progress: bool = True, *, cache_dir: str | os.PathLike | None = None
    ):
        check_revision(ref.revision, ref.url)  # also for a HubRef built by hand
        self.ref = ref
        self.progress = progress
        self.cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        self.endpoint = (os.environ.get("HF_ENDPOINT") or "").strip().rstrip("/") or None
        self.fallback_reason: str | None = (
            None  # set when the Hub was unreachable and the cache used
        )
        self._offline: bool | None = None
        self._commit: str | None = None
        self._repo_files: list[str] | None = None  # relative to the repo root

    # -- public ------------------------------------------------------------------------------

    @property
    def display(self) -> str:
        """The repo as the user wrote it (canonical form), for messages."""
        return self.ref.url

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
                f"{self._at_revision()}{_listing(_top_level(files), 'top-level entries')}:"
                " fix the path after the repo name"
            )
        return inside

    def exists(self, filename: str) -> bool:
        """Whether `filename` (relative to the subfolder) is in the repo (offline: in the cache)."""
        return _clean_name(filename) in set(self.list_files())

    def fetch(self, filename: str) -> pathlib.Path:
        """Download `filename` (relative to the subfolder) into the Hugging Face cache if needed and
        return its local path. Offline, only the cache is read."""
        name = check_relname(filename, self.display, "asks for the file")
        self._resolve()
        from huggingface_hub import hf_hub_download

        try:
            with library_call():  # no library chatter on stderr; retries bounded (hub_retry.py)
                path = hf_hub_download(
                    self.ref.repo_id,
                    name,
                    subfolder=self.ref.subfolder,
                    revision=self._commit,
                    cache_dir=str(self.cache_dir),
                    endpoint=self.endpoint,
                    local_files_only=bool(self._offline),
                    etag_timeout=_timeout(),
                    tqdm_class=None if self.progress else _quiet_bar(),
                    library_name="reinit",
                )
        except (Exception, RetryBudgetSpent) as exc:
            raise self._error(exc, filename=name) from None
        if not os.path.isfile(path):  # a FIFO or device planted in the cache is never opened
            raise UnsafePathError(
                f"{self.display}: the cached {name} ({path}) is not a regular file; "
                "delete it from the cache and download again"
            )
        return pathlib.Path(path)

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
        if _offline_mode():
            self._offline = True
            self._commit = self._commit_from_cache(api)
            return
        try:
            info = api.model_info(self.ref.repo_id, revision=self.ref.revision, timeout=_timeout())
        except Exception as exc:
            if not _unreachable(exc):
                raise self._error(exc) from None
            self.fallback_reason = _reason(exc)
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
            if s.rfilename and not _hidden(s.rfilename)
        )
        if self.ref.revision is None or not _COMMIT_RE.fullmatch(self.ref.revision):
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
                if os.path.isfile(full):  # follows the blob symlink; skips dangling ones
                    rel = pathlib.Path(full).relative_to(snapshot).as_posix()
                    if not _hidden(rel):
                        files.append(rel)
        return sorted(files)

    # -- errors ------------------------------------------------------------------------------

    def _endpoint_text(self) -> str:
        if self.endpoint:
            return self.endpoint
        from huggingface_hub import constants

        return constants.ENDPOINT

    def _at_revision(self) -> str:
        return f" at revision '{self.ref.revision}'" if self.ref.revision else ""

    def _download_hint(self, filename: str | None = None) -> str:
        cmd = f"hf download {self.ref.repo_id}"
        if filename is not None:
            cmd += " " + (f"{self.ref.subfolder}/{filename}" if self.ref.subfolder else filename)
        if self.ref.revision:
            cmd += f" --revision {self.ref.revision}"
        return f"`{cmd}`"

    def _not_cached_message(
        self,
        what: str,
        *,
        filename: str | None = None,
        unreachable: str | None = None,
        files: list[str] | None = None,
    ) -> str:
        where = f"the local cache ({self.cache_dir})"
        listing = _listing(files, "cached files") if files else ""
        if unreachable is None:
            return (
                f"{self.display}: {what} is not in {where}{listing} and HF_HUB_OFFLINE=1 is set:"
                f" run once online or {self._download_hint(filename)}"
            )
        return (
            f"{self.display}: cannot reach the Hub at {self._endpoint_text()} ({unreachable}) and"
            f" {what} is not in {where}{listing}: check your network, proxy and HF_ENDPOINT, then"
            f" run once online or {self._download_hint(filename)}"
        )

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

    def _error(self, exc: BaseException, filename: str | None = None) -> HubError:
        """Turn any exception of huggingface_hub (or below it) into a one-line `HubError`."""
        from huggingface_hub import errors as hf

        line = failure_message(self.display, filename, exc, _reason(exc))
        if line is not None:  # retry budget spent, or a download cut short (hub_retry.py)
            return HubError(line)
        cause = exc.__cause__ or exc.__context__
        answered = cause is not None and _status(cause) is not None
        if isinstance(exc, hf.LocalEntryNotFoundError) and not self._offline and answered:
            assert cause is not None
            return self._error(cause, filename)  # the Hub answered (e.g. 500): say what

        repo = self.ref.repo_id
        subject = f"'{filename}'" if filename is not None else None
        token_hint = "set HF_TOKEN or run `hf auth login`"
        status = _status(exc)

        if isinstance(exc, hf.GatedRepoError):
            return HubError(
                f"{self.display}: {repo} is a gated repository and this token has no access:"
                f" accept its conditions on {self._endpoint_text()}/{repo}, then {token_hint}"
            )
        if isinstance(exc, hf.DisabledRepoError):
            return HubError(f"{self.display}: {repo} has been disabled by its owner on the Hub")
        if isinstance(exc, hf.RepositoryNotFoundError):
            return HubError(
                f"{self.display}: repository {repo} not found on the Hub ({self._endpoint_text()}):"
                f" check the owner and name; if it is private or gated, {token_hint}"
            )
        if isinstance(exc, hf.RevisionNotFoundError):
            return HubError(
                f"{self.display}: revision '{self.ref.revision or 'main'}' not found in {repo}:"
                " check the branch, tag or commit after '@'"
            )
        if isinstance(exc, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)):
            cause = exc.__cause__ or exc.__context__
            unreachable = self.fallback_reason
            if unreachable is None and not self._offline:
                unreachable = _reason(cause) if cause is not None else "no connection"
            files = self._known_files() if self._offline else None
            return HubError(
                self._not_cached_message(
                    f"file {subject}" if subject else "the file",
                    filename=filename,
                    unreachable=unreachable,
                    files=files,
                )
            )
        if isinstance(exc, hf.EntryNotFoundError):  # RemoteEntryNotFoundError: the Hub said 404
            files = self._known_files()
            listing = _listing(files, "files there") if files else ""
            place = f"subfolder '{self.ref.subfolder}' of " if self.ref.subfolder else ""
            return HubError(
                f"{self.display}: file {subject or '(unknown)'} not found in {place}{repo}"
                f"{self._at_revision()}{listing}: check the file name"
            )
        if isinstance(exc, hf.HfHubHTTPError) or status is not None:
            about = f" for {subject}" if subject else ""
            if status == 401:
                return HubError(
                    f"{self.display}: the Hub refused the request{about} (401 unauthorized):"
                    f" the token is missing or invalid; {token_hint}"
                )
            if status == 403:
                return HubError(
                    f"{self.display}: access to {repo}{about} is forbidden (403): use a token"
                    f" with read access to it; {token_hint}"
                )
            if status == 429:
                return HubError(
                    f"{self.display}: the Hub is rate-limiting requests{about} (429): wait and"
                    f" retry, or {token_hint}"
                )
            if status is not None and status >= 500:
                return HubError(
                    f"{self.display}: the Hub answered {status}{about}: retry later, or set"
                    " HF_HUB_OFFLINE=1 to use files already in the cache"
                )
            return HubError(
                f"{self.display}: the Hub answered {status or 'an error'}{about}: {_reason(exc)}"
            )
        if _unreachable(exc):
            about = f" to download {subject}" if subject else ""
            return HubError(
                f"{self.display}: cannot reach the Hub at {self._endpoint_text()}{about}"
                f" ({_reason(exc)}): check your network, proxy and HF_ENDPOINT, or set"
                " HF_HUB_OFFLINE=1 if the files are already cached"
            )
        if isinstance(exc, OSError):
            about = f" {subject}" if subject else ""
            return HubError(
                f"{self.display}: could not store{about} in the cache {self.cache_dir}"
                f" ({_reason(exc)}): free disk space, fix permissions or set HF_HOME elsewhere"
            )
        if isinstance(exc, ValueError):
            return HubError(f"{self.display}: invalid request to the Hub: {_reason(exc)}")
        about = f" {subject}" if subject else ""
        return HubError(f"{self.display}: could not get{about} from the Hub: {_reason(exc)}")


# --------------------------------------------------------------------------------------------------
# helpers


def _env_true(name: str) -> bool:
    return (os.environ.get(name) or "").strip().upper() in _TRUE


def _offline_mode() -> bool:
    """Offline if the environment says so now, or if huggingface_hub read it so at import."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode()) or _env_true("HF_HUB_OFFLINE")


def _default_cache_dir() -> pathlib.Path:
    """The hub cache as huggingface_hub computes it, but from the environment as it is now."""
    env = os.environ
    raw = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not raw and env.get("HF_HOME"):
        raw = os.path.join(env["HF_HOME"], "hub")
    if not raw:
        from huggingface_hub import constants

        raw = constants.HF_HUB_CACHE
    return pathlib.Path(os.path.expandvars(os.path.expanduser(raw)))


def _timeout() -> float:
    raw = os.environ.get("HF_HUB_ETAG_TIMEOUT")
    if raw:
        try:
            value = float(raw)
            if value > 0:
                return value
        except ValueError:
            pass
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level exception classes of whichever HTTP client huggingface_hub uses."""
    classes: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, attr in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            mod = __import__(module)
            classes.append(getattr(mod, attr))
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _unreachable(exc: BaseException) -> bool:
    """The Hub could not be reached or could not answer (as opposed to answering 'no')."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return True
    status = _status(exc)
    if status is not None:
        return status == 429 or status >= 500
    return isinstance(exc, _transport_errors())


def _reason(exc: BaseException) -> str:
    from reinit.text import shown  # a server's message may hold escapes (it also reaches log lines)

    text = shown(_one_line(str(exc)))
    if len(text) > 160:
        text = text[:157] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _hidden(relname: str) -> bool:
    return any(part.startswith(".") for part in relname.split("/"))


def _clean_name(filename: str) -> str:
    return str(filename).replace("\\", "/").strip("/")


def _top_level(files: list[str]) -> list[str]:
    return sorted({f.split("/", 1)[0] + ("/" if "/" in f else "") for f in files})


def _listing(files: list[str] | None, label: str) -> str:
    if not files:
        return ""
    shown = ", ".join(files[:_SHOW_FILES])
    more = f", … ({len(files) - _SHOW_FILES} more)" if len(files) > _SHOW_FILES else ""
    return f" ({label}: {shown}{more})"


_QUIET_BAR: Any = None


def _quiet_bar() -> Any:
    """A huggingface_hub tqdm class that never shows (per call, unlike disable_progress_bars())."""
    global _QUIET_BAR
    if _QUIET_BAR is None:
        from huggingface_hub.utils import tqdm as hf_tqdm

        class _QuietBar(hf_tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        _QUIET_BAR = _QuietBar
    return _QUIET_BAR
