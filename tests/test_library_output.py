"""torch's and transformers' own text is routed, not printed raw (issue #23 L3): while a command
runs, a Python warning or a transformers log record becomes one bounded `warning:` line on
stderr, each text once; stdout holds only reinit's output, so `--json` parses.

Internal: imports reinit.cli.group, reinit.library_output."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from helpers import run_child

from reinit.cli.group import LIBRARY_WARNING_CHARS, MAX_LIBRARY_WARNINGS, _library_warning
from reinit.library_output import routed

# transformers logs "Unrecognized keys in `rope_parameters`" for the extra key, once per build
LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "rope_scaling": {"rope_type": "linear", "factor": 2.0, "surplus": 1},
}


def _assert_routed(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    ours = [x for x in lines if "surplus" in x]
    assert ours, stderr  # the warning is still told ...
    assert all(x.startswith("warning: transformers: ") for x in ours), ours  # ... as ours
    assert len(ours) == len(set(ours)) == 1, ours  # ... once, though transformers logs it again
    assert "[transformers]" not in stderr


def test_transformers_log_is_one_warning_line_and_json_stdout_parses(tmp_path: Path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA))
    new = run_child("new", d / "config.json", "-o", tmp_path / "out", "--json", cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    assert isinstance(json.loads(new.stdout), dict)
    _assert_routed(new.stderr)
    out = tmp_path / "out" / "model.safetensors"
    verify = run_child("verify", out, "--forward", "--json", cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert isinstance(json.loads(verify.stdout), dict)
    _assert_routed(verify.stderr)


def test_python_warnings_and_logs_are_bounded_and_deduplicated():
    got: list[str] = []
    with routed(got.append):
        for _ in range(3):
            warnings.warn("a torch-like\nwarning", UserWarning, stacklevel=1)
    assert got == ["UserWarning: a torch-like\nwarning"]
    # outside the window nothing is routed: the caller's settings stand
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("after", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["after"] and len(got) == 1


def test_cli_emit_cuts_and_counts(capsys):
    emit = _library_warning()
    emit("x" * 10_000 + "\nsecond line")
    emit("x" * 10_000 + "\nsecond line")
    for i in range(MAX_LIBRARY_WARNINGS + 5):
        emit(f"distinct {i}")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == MAX_LIBRARY_WARNINGS
    assert (
        lines[0].startswith("warning: x")
        and len(lines[0]) <= len("warning: ") + LIBRARY_WARNING_CHARS
    )


def test_transformers_logger_restored_after_window():
    lib = logging.getLogger("transformers")
    before = (lib.handlers[:], lib.propagate)
    with routed(lambda text: None):
        pass
    assert (lib.handlers, lib.propagate) == before


def test_a_quiet_internal_build_does_not_use_up_a_warning_once():
    """transformers' `warning_once` remembers every message it is given (an `lru_cache`), shown
    or not: a message given while reinit's own build was quiet was then never shown to the
    user's `--model` build in the same process. Now the quiet block lets nothing be remembered
    that was not shown; the real transformers logger and `warning_once` are used."""
    from transformers.utils import logging as hf_logging

    from reinit.library_output import transformers_quiet

    seen: list[str] = []
    logger = hf_logging.get_logger("transformers.models.reinit_test_quiet")
    once = logging.Logger.warning_once  # type: ignore[attr-defined]
    msg = f"reinit-test {id(seen)}: a config warning"  # a message no other test gives
    with routed(seen.append):
        with transformers_quiet():
            logger.warning_once(msg)  # type: ignore[attr-defined]
        assert seen == []
        assert logging.Logger.warning_once is once  # type: ignore[attr-defined]
        logger.warning_once(msg)  # type: ignore[attr-defined]
        logger.warning_once(msg)  # type: ignore[attr-defined]  (once: remembered now)
    assert seen == [f"transformers: {msg}"]
