"""What a Hub failure tells the user: `HubMessages`, the part of `hub.HubRepo` that turns any
exception of huggingface_hub (or below it) into a one-line `HubError` naming the repo, the
revision or file, and what to do."""

from __future__ import annotations

import pathlib

from reinit.errors import HubError
from reinit.io.hub._env import file_listing, is_unreachable, reason_of, status_of
from reinit.io.hub._retry import failure_message
from reinit.io.hub._url import HubRef
from reinit.io.stall import STALL_ENV, HubStalled

__all__ = ["HubMessages"]


class HubMessages:
    """Error messages of a Hub repository view (mixed into `hub.HubRepo`, which sets the
    attributes below and implements `_known_files`)."""

    ref: HubRef
    cache_dir: pathlib.Path
    endpoint: str | None
    fallback_reason: str | None
    _offline: bool | None

    @property
    def display(self) -> str:
        """The repo as the user wrote it (canonical form), for messages."""
        return self.ref.url

    def _known_files(self) -> list[str] | None:
        """Files of the pinned snapshot relative to the subfolder, for hints; never raises."""
        raise NotImplementedError

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
        listing = file_listing(files, "cached files") if files else ""
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

    def _stalled(self, exc: HubStalled, doing: str) -> HubError:
        """A trickling or frozen Hub (see `reinit.io.stall`)."""
        return HubError(
            f"{self.display}: the Hub at {self._endpoint_text()} stalled {doing} from "
            f"{self.ref.repo_id} (no progress for {exc.seconds:g} s, {STALL_ENV}): retry later, "
            "or set HF_HUB_OFFLINE=1 to use files already in the cache"
        )

    def _http_error(
        self, exc: BaseException, status: int | None, subject: str | None, token_hint: str
    ) -> HubError:
        """The Hub answered with an HTTP error: what each status means and what to do."""
        repo = self.ref.repo_id
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
            f"{self.display}: the Hub answered {status or 'an error'}{about}: {reason_of(exc)}"
        )

    def _error(self, exc: BaseException, filename: str | None = None) -> HubError:
        """Turn any exception of huggingface_hub (or below it) into a one-line `HubError`."""
        from huggingface_hub import errors as hf

        line = failure_message(self.display, filename, exc, reason_of(exc))
        if line is not None:  # retry budget spent, or a download cut short (hub_retry.py)
            return HubError(line)
        cause = exc.__cause__ or exc.__context__
        answered = cause is not None and status_of(cause) is not None
        if isinstance(exc, hf.LocalEntryNotFoundError) and not self._offline and answered:
            assert cause is not None
            return self._error(cause, filename)  # the Hub answered (e.g. 500): say what

        repo = self.ref.repo_id
        subject = f"'{filename}'" if filename is not None else None
        token_hint = "set HF_TOKEN or run `hf auth login`"
        status = status_of(exc)

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
                unreachable = reason_of(cause) if cause is not None else "no connection"
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
            listing = file_listing(files, "files there") if files else ""
            place = f"subfolder '{self.ref.subfolder}' of " if self.ref.subfolder else ""
            return HubError(
                f"{self.display}: file {subject or '(unknown)'} not found in {place}{repo}"
                f"{self._at_revision()}{listing}: check the file name"
            )
        if isinstance(exc, hf.HfHubHTTPError) or status is not None:
            return self._http_error(exc, status, subject, token_hint)
        if is_unreachable(exc):
            about = f" to download {subject}" if subject else ""
            return HubError(
                f"{self.display}: cannot reach the Hub at {self._endpoint_text()}{about}"
                f" ({reason_of(exc)}): check your network, proxy and HF_ENDPOINT, or set"
                " HF_HUB_OFFLINE=1 if the files are already cached"
            )
        if isinstance(exc, OSError):
            about = f" {subject}" if subject else ""
            return HubError(
                f"{self.display}: could not store{about} in the cache {self.cache_dir}"
                f" ({reason_of(exc)}): free disk space, fix permissions or set HF_HOME elsewhere"
            )
        if isinstance(exc, ValueError):
            return HubError(f"{self.display}: invalid request to the Hub: {reason_of(exc)}")
        about = f" {subject}" if subject else ""
        return HubError(f"{self.display}: could not get{about} from the Hub: {reason_of(exc)}")
