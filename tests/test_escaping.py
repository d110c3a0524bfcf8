"""Names from a checkpoint cannot forge what reinit shows (issue #18): a tensor name holding
`\\n`, `\\r`, `\\x1b[31m`, `\\x00` and a right-to-left override (U+202E) appears escaped in every
human-readable output (`inspect`, `report`, `apply`'s table, `--dry-run`, `diff`, the error line,
the `.md` and `.csv` reports) and byte-exact in every JSON output.

Internal: also tests reinit.text directly (not the `reinit` API).
"""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from helpers import run
from safetensors.torch import save_file

from reinit.text import md_cell, shown

# Two layers of one kind, so the per-layer tables (whose row title is the kind) show it too.
EVIL = [f"enc.layer.{i}.a\nerror: fake\r\x1b[31m\x00\u202eb.weight" for i in range(2)]
ESCAPED = "a\\nerror: fake\\r\\x1b[31m\\x00\\u202eb"
RAW = ("\n", "\r", "\x1b", "\x00", "\u202e")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def evil(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "evil.safetensors"
    save_file({n: torch.randn(8, 8, generator=g) for n in EVIL}, str(path))
    return path


# 160 columns (the widest reinit uses), so the long escaped name is not clipped
WIDE = {"COLUMNS": "160"}


def assert_escaped(text: str) -> None:
    """No raw control/bidi character of the name (a newline only between lines) and the
    escaped form present."""
    for line in text.splitlines():
        for ch in RAW:
            assert ch not in line, repr(line)
    assert "\r" not in text and "\x1b" not in text and "\x00" not in text
    assert "error: fake" not in [line.strip() for line in text.splitlines()]
    assert ESCAPED in text, text


def test_shown_set():
    assert shown("plain.name-ü µ 文字 x") == "plain.name-ü µ 文字 x"
    assert shown("a\tb\nc\rd\x1b\x00\x7f\x85") == "a\\tb\\nc\\rd\\x1b\\x00\\x7f\\x85"
    assert shown("\u202e\u2066\u200b\ufeff\u00ad") == "\\u202e\\u2066\\u200b\\ufeff\\xad"
    assert shown("\u2028\u2029\ud800") == "\\u2028\\u2029\\ud800"
    assert shown("\U000e0001") == "\\U000e0001"  # a Cf outside the BMP (language tag)
    assert md_cell("a|b\n") == "a\\|b\\n"
    assert md_cell("_x_y*<&[]\\<\\n") == "\\_x_y\\*\\<\\&\\[\\]\\\\\\<\\n"


def test_inspect(evil):
    res = run("inspect", evil, env=WIDE)
    assert res.exit_code == 0, res.output
    assert_escaped(res.stdout)
    assert len(res.stdout.splitlines()) == 2  # one line per tensor, nothing forged


def test_inspect_json_exact(evil):
    res = run("inspect", evil, "--json", env=WIDE)
    assert [r["name"] for r in json.loads(res.stdout)] == EVIL


def test_report_terminal_files_and_json(evil, tmp_path):
    md, csv_path = tmp_path / "r.md", tmp_path / "r.csv"
    res = run("report", evil, "-o", md, "-o", csv_path, env=WIDE)
    assert res.exit_code == 0, res.output
    assert_escaped(res.stderr)
    assert_escaped(md.read_text())
    assert_escaped(csv_path.read_text())
    assert "enc.layer.*.a\\nerror" in res.stderr  # the per-layer table's kind
    res = run("report", evil, "--json", env=WIDE)
    assert [t["name"] for t in json.loads(res.stdout)["tensors"]] == EVIL


def test_apply_table_reports_and_json(evil, tmp_path):
    md, csv_path, js = tmp_path / "r.md", tmp_path / "r.csv", tmp_path / "r.json"
    res = run(
        "apply", evil, "-r", "*.weight=zeros", "--report", md, "--report", csv_path,
        "--report", js, "--json", env=WIDE,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert_escaped(res.stderr)
    assert [t["name"] for t in json.loads(res.stdout)["tensors"]] == EVIL
    assert [t["name"] for t in json.loads(js.read_text())["tensors"]] == EVIL
    text = md.read_text()
    assert_escaped(text)
    assert f"`enc.layer.*.{ESCAPED}.weight`" in text  # the kind's row, escaped
    rows = list(csv.reader(io.StringIO(csv_path.read_text())))
    assert [r[0] for r in rows[1:]] == [shown(n) for n in EVIL]
    assert_escaped(csv_path.read_text())


def test_markdown_pipe(tmp_path):
    src = tmp_path / "pipe.safetensors"
    save_file({"a|b": torch.ones(2)}, str(src))
    md = tmp_path / "r.md"
    assert run("report", src, "-o", md, "-q", env=WIDE).exit_code == 0
    assert "| `a\\|b` |" in md.read_text()


def test_markdown_backticks_and_pipes_in_names_keep_the_table(tmp_path):
    """A backtick in a name closed the kind's code span early (and a lone one swallowed the
    rest of the row); a `|` in a rule outside the table showed a stray backslash. Read by a
    real CommonMark + GFM-table parser, every row has the header's cells and every code span
    holds the exact name, kind or rule."""
    markdown_it = pytest.importorskip("markdown_it")
    from html import unescape

    kinds = ["enc.*.a`b.weight", "enc.*.c|d.weight", "enc.*.``x``.weight", "enc.*.`e|f`.weight"]
    names = [k.replace("*", str(i)) for k in kinds for i in range(2)] + ["`", "|"]
    src = tmp_path / "tick.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({n: torch.randn(4, 4, generator=g) for n in names}, str(src))
    md = tmp_path / "r.md"
    rules = ["enc.0.a`b.weight=zeros", "enc.*.c|d.weight=ones", "`=zeros"]
    args = ["apply", src, "-o", tmp_path / "o.safetensors", "--report", md, "-q"]
    for r in rules:
        args += ["-r", r]
    assert run(*args, env=WIDE).exit_code == 0
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md.read_text())
    table = html.split("<table>")[1].split("</table>")[0]
    rows = table.split("<tr>")[1:]
    assert rows and all(row.count("<td") + row.count("<th") == 13 for row in rows), rows
    first = [unescape(r.split("<td>")[1].split("</td>")[0]) for r in rows[1:]]
    code = [c.removeprefix("<code>").removesuffix("</code>") for c in first]
    assert set(kinds) <= set(code) and {"`", "|"} <= set(code), code
    spans = {unescape(x.split("</code>")[0]) for x in html.split("<code>")[1:]}
    assert set(rules) <= spans, spans  # the rules line and the rule cells, exact
    assert "\\|" not in "".join(spans)  # no stray backslash before a pipe in any code span


def test_markdown_lines_show_html_entities_links_and_emphasis_as_written(tmp_path):
    """The report's title (the source path) and its warnings are text from the user's files:
    rendered by a real CommonMark parser, `<b>`, `&#x202e;` (which would render the bidi
    override `shown` escaped), `[l](…)`, `*e*` and a backslash before `<` show as written; no
    tag, link, emphasis or entity reaches the HTML."""
    markdown_it = pytest.importorskip("markdown_it")
    from html import unescape

    name = "<b>x&lt;&#x202e;[l](http:e)*e*_u_\\<i>"
    src = tmp_path / f"{name}.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"a.weight": torch.randn(4, 4, generator=g), "b": torch.ones(2)}, str(src))
    md = tmp_path / "r.md"
    rule = "zz<b>y*_q_=ones"
    res = run(
        "apply", src, "-r", "a.weight=zeros", "-r", rule, "--allow-unmatched",
        "-o", tmp_path / "o.safetensors", "--report", md, "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md.read_text())
    title = html.split("<h1>")[1].split("</h1>")[0]
    assert unescape(title) == f"reinit report: {src}"
    warning = next(li for li in html.split("<li>") if li.startswith("warning:"))
    warning = warning.split("</li>")[0]
    assert f"rule '{rule}' matches no tensor" in unescape(warning)
    for tag in ("<b>", "<i>", "<em>", "<strong>", "<a "):
        assert tag not in title + warning
    assert "\u202e" not in unescape(html)


def test_dry_run(evil):
    res = run("apply", evil, "-r", "*.weight=zeros", "--dry-run", env=WIDE)
    assert res.exit_code == 0, res.output
    assert_escaped(res.stdout)
    assert len(res.stdout.splitlines()) == 1 + 1 + 1  # plan line, header, one kind's row
    res = run("apply", evil, "-r", "*.weight=zeros", "--dry-run", "--by", "tensor", env=WIDE)
    assert_escaped(res.stdout)
    assert len(res.stdout.splitlines()) == 1 + 1 + len(EVIL)  # plan line, header, rows


def test_diff(evil, tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({n: torch.zeros(8, 8) for n in EVIL}, str(other))
    res = run("diff", evil, other, env=WIDE)
    assert res.exit_code == 0, res.output
    assert_escaped(res.stdout)
    res = run("diff", evil, other, "--json", env=WIDE)
    assert sorted(t["name"] for t in json.loads(res.stdout)["tensors"]) == sorted(EVIL)


def test_error_line(evil, tmp_path):
    """An error that names the tensor is still one line, with the name escaped."""
    other = tmp_path / "other.safetensors"
    save_file({n: torch.zeros(3) for n in EVIL}, str(other))  # wrong shape for a transplant
    res = run("apply", evil, "-r", f"*.weight=from({other})", "-q", env=WIDE)
    assert res.exit_code in (1, 2), res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert_escaped(res.stderr)


def test_note_lines_quote_names_escaped(evil, tmp_path):
    """`note:` lines quote tensor names (`renamed from ...`): escaped like every other line."""
    res = run("apply", evil, "--rename", "enc.*=dec.{1}", "-o", tmp_path / "o.safetensors",
              env=WIDE)  # fmt: skip
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if line.startswith("note: ")]
    assert notes and any(ESCAPED in line for line in notes), res.stderr
    assert_escaped(res.stderr)


def test_config_notes_quote_values_and_keys_escaped(tmp_path):
    """The notes about config.json quote the source config's old value and the --config key
    (a recipe's, or a config.json from elsewhere): a value cannot forge an `error:` line."""
    folder = tmp_path / "m"
    folder.mkdir()
    save_file(
        {f"encoder.layer.{i}.w": torch.ones(2, 2) for i in range(2)}, folder / "model.safetensors"
    )
    value = f"a{EVIL[0][len('enc.layer.0.a') :]}"  # the evil name's tail: \n, \r, ESC, NUL, RLO
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": value}))
    key = "k\r\x1b]0;t\x07\u202e"
    res = run("apply", folder, "-r", "*=zeros", "-o", tmp_path / "out", "-q",
              "--config", f"{key}=1", env=WIDE)  # fmt: skip
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == len(res.stderr.splitlines()) == 2, res.stderr
    assert_escaped(res.stderr)
    assert "k\\r\\x1b]0;t\\x07\\u202e = 1" in res.stderr


def test_a_huge_config_value_is_cut_in_its_note(tmp_path):
    """A 1 MB string as the source config's `num_hidden_layers` was printed whole."""
    folder = tmp_path / "m"
    folder.mkdir()
    tensors = {f"encoder.layer.{i}.w": torch.ones(2, 2) for i in range(2)}
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": "x" * 1_000_000}))
    res = run("apply", folder, "-r", "*=zeros", "-o", tmp_path / "out", "-q", "--config", "k=1")
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2 and all(len(line) < 2_200 for line in notes), res.stderr[:300]
