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


# Tests left out of the quick suite (`./scripts/test --quick`, -m "not slow"); they run in the
# whole suite, as do the tests marked @pytest.mark.slow in their files. An entry is a test (every
# parametrization) or one parametrization (`name[id]`). First those that took 6 s or more each
# (pytest --durations, the whole suite under -n 2 on the shared 2-core machine): subprocesses of
# the installed CLI, signal and hang bounds, hostile inputs, real-shaped models.
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
    # Then, so that the quick suite takes about a minute (CONTRIBUTING.md), its costliest tests
    # (0.25 s to 21 s each, most over 0.5 s; junit times under -n 2): child processes (torchrun
    # ranks, a fresh python per command, hang bounds), guide pages of many commands, real-shaped
    # models. Each file keeps a quick test of what these cover (another parametrization or a
    # cheaper sibling), but test_memory.py, whose every test is a memory bound on 100+ MB.
    "test_apply_no_torch.py::test_a_torch_that_cannot_load_is_one_error_line_where_the_run_first_needs_it[*.mlp.down_proj.weight=from({c})]",
    "test_apply_no_torch.py::test_a_transplant_across_dtypes_loads_torch",
    "test_apply_no_torch.py::test_torch_loading_on_one_thread_while_another_imports_torch_nn",
    "test_apply_no_torch.py::test_torch_loads_only_when_the_run_computes[rules1-False]",
    "test_apply_no_torch.py::test_torch_loads_only_when_the_run_computes[rules2-False]",
    "test_apply_no_torch.py::test_torch_loads_only_when_the_run_computes[rules3-False]",
    "test_apply_no_torch.py::test_torch_loads_only_when_the_run_computes[rules4-False]",
    "test_apply_no_torch.py::test_torch_loads_only_when_the_run_computes[rules6-True]",
    "test_cli.py::test_no_color_turns_the_terminal_colors_off",
    "test_dcp.py::test_a_chunk_file_that_is_a_fifo_or_links_out_is_refused[fifo]",
    "test_dcp.py::test_a_chunk_file_that_is_a_fifo_or_links_out_is_refused[link out]",
    "test_dcp.py::test_the_guide_page_runs",
    "test_determinism.py::test_a_run_leaves_the_thread_count_of_later_threads_as_it_was[file]",
    "test_forward_check.py::test_mean_resize_growth_by_8_tokens_gives_small_measured_kl",
    "test_hostile_args.py::test_hostile_recipes_are_usage_errors_with_file_and_line[deep.yaml-text2-nested]",
    "test_hostile_round3.py::test_a_config_too_big_for_memory_is_refused_before_allocating[verify]",
    "test_hostile_round3.py::test_verify_report_from_a_fifo_or_device_is_refused[fifo]",
    "test_hub_quiet.py::test_endless_resume_is_cut_by_the_budget",
    "test_library_output.py::test_transformers_log_is_one_warning_line_and_json_stdout_parses",
    "test_memory.py::test_a_big_narrow_draw_is_never_whole_in_float32",
    "test_memory.py::test_rows_grown_by_resize_stream",
    "test_model_config_limits.py::test_config_fifo_does_not_block[probe]",
    "test_moe.py::test_expert_and_router_reinit_report_reads_at_a_glance",
    "test_moe.py::test_report_per_layer_view_has_a_column_per_layer_not_per_expert",
    "test_overwrite_own.py::test_a_fifo_in_the_output_folder_does_not_block_overwrite",
    "test_plot.py::test_report_plot_png_decodes_at_size_and_marks_flags",
    "test_program_end.py::test_an_interrupt_during_the_torch_import_waits_for_it_and_exits_130",
    "test_readme_examples.py::test_shell_blocks_of_the_page_run[docs/guide/model-awareness.md]",
    "test_readme_examples.py::test_shell_blocks_of_the_page_run[docs/guide/report.md]",
    "test_readme_examples.py::test_shell_blocks_of_the_page_run[docs/guide/torchrun.md]",
    "test_readme_examples.py::test_shell_blocks_of_the_page_run[docs/guide/transplant.md]",
    "test_reference.py::test_kaiming_on_a_768_wide_bert_with_model_is_flagged_against_its_default",
    "test_report_judgement.py::test_a_multi_step_recipe_still_finds_the_untrained_matrix",
    "test_report_judgement.py::test_a_trained_encoder_in_a_new_head_model_flags_no_transplanted_tensor",
    "test_report_judgement.py::test_min_top1_and_max_kl_need_logits",
    "test_report_judgement.py::test_probe_of_a_model_folder_probes_its_weights",
    "test_report_judgement.py::test_renaming_changes_no_judgement",
    "test_report_judgement.py::test_verify_forward_of_a_new_head_model_against_its_encoder_passes",
    "test_report_no_torch.py::test_report_of_safetensors_never_imports_torch[0-args0-shards]",
    "test_report_no_torch.py::test_report_of_safetensors_never_imports_torch[0-args1-file]",
    "test_report_no_torch.py::test_report_of_safetensors_never_imports_torch[0-args1-shards]",
    "test_report_no_torch.py::test_report_of_safetensors_never_imports_torch[1-args0-file]",
    "test_report_no_torch.py::test_report_of_safetensors_never_imports_torch[1-args0-shards]",
    "test_report_no_torch.py::test_report_of_safetensors_never_imports_torch[1-args1-file]",
    "test_signal_after_publish.py::test_a_signal_after_publication_exits_0_with_the_output[returned-SIGINT]",
    "test_signal_after_publish.py::test_a_signal_after_publication_exits_0_with_the_output[returned-SIGTERM]",
    "test_signal_after_publish.py::test_a_signal_after_publication_exits_0_with_the_output[teardown-SIGTERM]",
    "test_signal_mid_write_dcp.py::test_sigterm_mid_write_dcp",
    "test_stats_ahead.py::test_a_hostile_header_is_refused_the_same_with_the_worker",
    "test_stats_ahead.py::test_cli_with_the_worker_never_imports_from_the_current_directory",
    "test_stats_ahead.py::test_report_shares_the_summing_with_a_worker_and_gives_the_same_report[shards-False]",
    "test_stats_ahead.py::test_the_command_sets_thread_defaults_the_user_can_override[OPENBLAS_NUM_THREADS-1]",
    "test_torchrun.py::test_a_rank_killed_mid_run_leaves_nothing",
    "test_torchrun.py::test_two_ranks_write_the_bytes_of_one_process",
    "test_trust_code.py::test_auto_map_config_is_refused[apply-model]",
    "test_trust_code.py::test_auto_map_config_is_refused[verify-forward]",
    "test_zero.py::test_a_rank_file_that_is_a_fifo_or_links_out_is_refused[fifo]",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    named: set[str] = set()
    for item in items:
        test = item.nodeid.removeprefix("tests/")
        for name in (test, test.split("[")[0]):
            if name in SLOW_TESTS:
                item.add_marker(pytest.mark.slow)
                named.add(name)
    _every_slow_name_is_a_test(config, items, named)


def _every_slow_name_is_a_test(
    config: pytest.Config, items: list[pytest.Item], named: set[str]
) -> None:
    """A renamed test or parametrization would leave its SLOW_TESTS entry naming nothing, and
    the test itself in the quick suite: fail the run instead (when whole files were collected)."""
    if any("::" in arg for arg in config.args):
        return
    files = {item.nodeid.removeprefix("tests/").split("::")[0] for item in items}
    stale = sorted(n for n in SLOW_TESTS - named if n.split("::")[0] in files)
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS names no collected test: {stale}")


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Python's own SIGINT handler (raises KeyboardInterrupt), as in the `reinit` program."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
