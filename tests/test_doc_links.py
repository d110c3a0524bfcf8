"""Every relative link of README.md, CONTRIBUTING.md and docs/ resolves: the file exists and,
for `#anchor` links, a heading of that file has that anchor (GitHub's rule for heading ids)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Guide pages written on other branches at the same time; they exist once those are merged.
PENDING = {}
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} (.+)$", text, re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # link-like text inside code spans is not a link
    return [m.group(1) for m in _LINK.finditer(text)]


def test_slug_matches_githubs_rule():
    assert slug("Resize: `--resize NAME=[SHAPE][:SCHEME]`") == "resize---resize-nameshapescheme"
    assert slug("config.json follows the surgery") == "configjson-follows-the-surgery"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in PENDING:
                broken.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_no_design_section_citations():
    """The docs cite their own pages, not a design file the repository does not hold."""
    for page in PAGES:
        assert "DESIGN §" not in page.read_text(encoding="utf-8"), page


def test_every_test_the_docs_name_exists():
    """A promise is only as good as its test: each `tests/X.py` (and `tests/X.py::name`) the
    docs name is a file of this repo (holding a function of that name)."""
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path, name in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", text):
            source = ROOT / path
            if not source.is_file():
                missing.append(f"{page.name}: {path}")
            elif name and f"def {name}(" not in source.read_text(encoding="utf-8"):
                missing.append(f"{page.name}: {path}::{name}")
    assert not missing, missing


@pytest.mark.parametrize("front", ["README.md", "docs/index.md"])
def test_every_docs_page_is_reachable_from_the_front_pages(front):
    """A page nothing links to is a page no new user finds: README.md and docs/index.md each
    link every guide page and every page of docs/ (the bench logs are reached through
    docs/bench/, the report example through the report guide)."""
    page = ROOT / front
    linked = {(page.parent / t.partition("#")[0]).resolve() for t in links(page) if ":" not in t}
    pages = [*(ROOT / "docs" / "guide").glob("*.md"), *(ROOT / "docs").glob("*.md")]
    skip = {"index.md", "report-example.md"}
    missing = [
        p.relative_to(ROOT).as_posix()
        for p in sorted(pages)
        if p.name not in skip and p.resolve() not in linked
    ]
    assert not missing, f"{front} does not link {missing}"


def test_the_docs_use_only_the_public_api():
    """A user reads the API `reinit/__init__.py` exports (`reinit.apply`, `reinit.Report`,
    ...); a page that writes `from reinit.run.apply import ...` or `reinit.schemes.generate`
    sends them to a module that may change without notice."""
    submodules = sorted(
        p.stem
        for p in (ROOT / "reinit").iterdir()
        if not p.name.startswith("_") and p.suffix in (".py", "")
    )
    internal = re.compile(  # (`model.reinit.report.json` is a file name, not a module)
        rf"\b(?:from|import)\s+reinit\.\w"
        rf"|(?<![\w.])reinit\.(?:{'|'.join(submodules)})\.(?!(?:json|csv|md)\b)\w"
    )
    found = [
        f"{page.relative_to(ROOT)}: {m.group(0)}"
        for page in PAGES
        if page.name != "CONTRIBUTING.md"  # the contributors' page may name modules
        for m in internal.finditer(page.read_text(encoding="utf-8"))
    ]
    assert not found, found
