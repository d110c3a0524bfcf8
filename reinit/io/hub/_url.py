"""The `hf://OWNER/NAME[@REVISION][/SUBFOLDER]` grammar (docs/reference.md): `is_hf_url` says whether a
source is meant as a Hub URL, `parse_hf_url` checks it (huggingface_hub's grammar, restricted to
model repositories, with a safe revision: see `hub`'s module doc) into a `HubRef`.

Cheap to import (huggingface_hub is loaded only when a URL is parsed), so every layer that
must tell a Hub URL from a path asks `is_hf_url` rather than testing the prefix itself."""

from __future__ import annotations

import re
from dataclasses import dataclass

from reinit.errors import UsageError
from reinit.io.confine import check_revision
from reinit.text import one_line

__all__ = ["COMMIT_RE", "HF_GRAMMAR", "HF_SCHEME", "HubRef", "is_hf_url", "parse_hf_url"]

HF_SCHEME = "hf://"
HF_GRAMMAR = "hf://OWNER/NAME[@REVISION][/SUBFOLDER]"
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
# Revisions that hold a "/" and that the hf:// grammar keeps verbatim (as huggingface_hub does).
_SPECIAL_REF_RE = re.compile(r"refs/(?:convert/[\w.-]+|pr/\d+)")


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


def is_hf_url(text: object) -> bool:
    """True when `text` is meant as a Hub URL (starts with `hf://`); it may still be malformed."""
    return isinstance(text, str) and text.startswith(HF_SCHEME)


def parse_hf_url(text: str) -> HubRef:
    """Parse `hf://OWNER/NAME[@REVISION][/SUBFOLDER]`; a malformed URL is a `UsageError` (exit 2)."""
    if not is_hf_url(text):
        raise UsageError(f"{text!r} is not a Hub URL: expected {HF_GRAMMAR}")
    from huggingface_hub import parse_hf_uri
    from huggingface_hub.errors import HfUriError

    try:
        uri = parse_hf_uri(text)
    except HfUriError as exc:
        detail = one_line(getattr(exc, "msg", "") or str(exc))
        raise UsageError(f"bad Hub URL {text!r}: {detail} Expected {HF_GRAMMAR}") from None
    if uri.type != "model":
        raise UsageError(
            f"bad Hub URL {text!r}: it names a {uri.type}, reinit reads model repositories only"
            f" ({HF_GRAMMAR})"
        )
    subfolder = uri.path_in_repo.strip("/") or None
    if subfolder is not None and any(part in (".", "..") for part in subfolder.split("/")):
        raise UsageError(
            f"bad Hub URL {text!r}: the subfolder {subfolder!r} must not contain '.' or '..'"
        )
    check_revision(uri.revision, text)
    return HubRef(repo_id=uri.id, revision=uri.revision, subfolder=subfolder)
