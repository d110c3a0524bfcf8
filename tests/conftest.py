"""Shared fixtures: an isolated Hugging Face home (HF_HOME under tmp_path, no token, any stray
request sent to a closed local port), offline and online modes, and a fake Hub."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import huggingface_hub.constants as hf_constants
import pytest
from hubcache import FakeHub, closed_port


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty HF_HOME under tmp_path; no token; any stray request goes to a closed local port."""
    home = tmp_path / "hf_home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", 2)
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 2)
    return home


@pytest.fixture
def offline(hf_home, monkeypatch):
    """HF_HUB_OFFLINE=1 as huggingface_hub sees it (its constant is read at import) and as the
    environment says it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return hf_home


@pytest.fixture
def online(hf_home, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return hf_home


@pytest.fixture
def fake_hub(online, monkeypatch):
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.close()


@pytest.fixture(autouse=True)
def _default_width(monkeypatch):
    """The terminal report is as wide as the terminal (`COLUMNS`, else the tty, else 100). Tests
    assume 100 whatever runs them: a wide terminal, or a pytest-xdist worker (COLUMNS=80)."""
    monkeypatch.setenv("COLUMNS", "100")


# Tests that took 6 s or more each (pytest --durations, the whole suite under -n 2 on the shared
# 2-core machine): subprocesses of the installed CLI, signal and hang bounds, hostile inputs,
# real-shaped models. They run in the whole suite; `./scripts/test --quick` (-m "not slow")
# leaves them out, as it does the tests marked @pytest.mark.slow in their files.
SLOW_TESTS = {
    "test_apply.py::test_mission_example_on_a_bert_checkpoint",
    "test_atomic.py::test_file_size_limit_and_read_only_folder",
    "test_atomic.py::test_signal_mid_write",
    "test_cli.py::test_a_closed_pipe_ends_quietly_with_exit_0",
    "test_cli.py::test_installed_executable_in_a_subprocess",
    "test_config_follows.py::test_minilm_becomes_a_3_label_classifier_that_loads_as_one",
    "test_confine.py::test_fifo_extra_file_is_refused_without_blocking",
    "test_confine.py::test_fifo_shard_is_refused_without_blocking",
    "test_confine.py::test_fifo_source_is_refused_without_blocking",
    "test_examples.py::test_detection_head_as_the_readme_shows",
    "test_examples.py::test_gpt2_init_as_its_header_shows",
    "test_examples.py::test_grow_vocab_as_its_header_shows",
    "test_forward_check.py::test_same_architecture_transplant_gives_kl_exactly_zero",
    "test_fuzz_header.py::test_structured_headers",
    "test_hostile_args.py::test_billion_laughs_through_the_cli_is_refused_in_bounded_time",
    "test_hostile_args.py::test_overflow_on_the_command_line_is_exit_2_without_output",
    "test_hostile_hub.py::test_a_normal_hub_is_unaffected_by_the_stall_watch",
    "test_hostile_hub.py::test_trickling_hub_fails_with_a_stall_error",
    "test_hostile_readers.py::test_a_header_of_a_million_tensors_fails_fast_in_bounded_memory",
    "test_hostile_rules.py::test_bad_character_range_on_the_command_line",
    "test_hostile_rules.py::test_catastrophic_user_regex_is_stopped_with_a_rule_error",
    "test_hostile_rules.py::test_glob_matching_agrees_with_the_old_regex_captures_included",
    "test_hostile_rules.py::test_many_stars_on_names_with_many_dots_finish_fast",
    "test_hostile_rules.py::test_plan_with_the_index_picks_the_same_winner_as_trying_every_rule",
    "test_hostile_rules.py::test_three_thousand_rule_recipe_plans_fast",
    "test_hub_apply.py::test_cli_subprocess_with_offline_env",
    "test_hub_quiet.py::test_500_on_a_shard_is_one_line_within_the_bound",
    "test_hub_quiet.py::test_cache_refs_not_writable_says_nothing",
    "test_hub_quiet.py::test_truncated_download_is_one_line_within_the_bound",
    "test_options.py::test_a_recipe_plot_key_plots_as_the_flag_does",
    "test_probe.py::test_probe_cli_json_and_plot",
    "test_publish.py::test_concurrent_runs_to_one_output_exactly_one_wins",
    "test_publish.py::test_ctrl_c_at_any_moment_is_told_truthfully",
    "test_readonly_output.py::test_read_only_file_system_is_one_clear_line",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.split("[")[0].removeprefix("tests/") in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Python's own SIGINT handler (raises KeyboardInterrupt), as in the `reinit` program."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
