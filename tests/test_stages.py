"""`apply` as named stages (internals: reinit.run.prepare, layout, write). A writer may write any
subset of the layout's shards and publishing is a step of its own, so a run split across
writers (one per rank, say) gives the same bytes as one `reinit.apply`, and nothing is in
place before `publish`.

Internal: imports reinit.options, reinit.run.layout, reinit.run.prepare, reinit.run.write."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

import reinit
from reinit.errors import UsageError
from reinit.options import ApplyOptions
from reinit.run.layout import OutputRequest, lay_out
from reinit.run.prepare import Job, prepare
from reinit.run.write import Written, publish, report_of, stage, write, write_side_files

RULES = ["*.mlp.*.weight=kaiming_normal", "model.norm.weight=ones"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    src = tmp_path_factory.mktemp("llama") / "llama"
    model.save_pretrained(src, max_shard_size="20KB")
    return transformers, src


def _files(folder):
    return {
        p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "reinit-report.json"
    }


def test_shards_written_one_at_a_time_then_published_equal_one_apply(llama, tmp_path):
    transformers, src = llama
    whole = tmp_path / "whole"
    whole_report = reinit.apply(src, RULES, f"{whole}/", seed=3)

    split = tmp_path / "split"
    o = ApplyOptions(seed=3)
    with ExitStack() as stack:
        prepared = prepare(stack, Job.of(src, RULES, o), o)
        layout = lay_out(prepared, OutputRequest.of(f"{split}/", o))
        shards = layout.shards()
        assert len(shards) > 2 and layout.index is not None  # the index is decided up front
        staging = stage(stack, layout)
        parts = [write(prepared, layout, staging.tmp, shards=[s]) for s in reversed(shards)]
        side = write_side_files(prepared, layout, staging.tmp)  # copied files, index
        assert not split.exists()  # nothing is in place before publish
        entries = tuple(e for p in parts for e in p.entries)
        total = sum(p.bytes_written for p in parts) + side
        report = report_of(prepared, layout, Written(entries, total))
        publish(staging, layout, report)

    assert _files(split) == _files(whole)
    assert [(e.name, e.after) for e in report.tensors] == [
        (e.name, e.after) for e in whole_report.tensors
    ]  # in plan order, whatever order the shards were written in
    assert report.summary.reinit == whole_report.summary.reinit == 7  # 2 x 3 mlp + norm
    assert report.summary.bytes_written == whole_report.summary.bytes_written
    loaded, info = transformers.LlamaForCausalLM.from_pretrained(split, output_loading_info=True)
    assert not any(info.values()), info
    assert torch.equal(loaded.model.norm.weight, torch.ones(32))


def test_an_unpublished_run_leaves_nothing(llama, tmp_path):
    _, src = llama
    out = tmp_path / "out"
    o = ApplyOptions()
    with ExitStack() as stack:
        prepared = prepare(stack, Job.of(src, RULES, o), o)
        layout = lay_out(prepared, OutputRequest.of(f"{out}/", o))
        staging = stage(stack, layout)
        write(prepared, layout, staging.tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the staged folder is removed


def test_a_shard_the_layout_lacks_is_refused(llama, tmp_path):
    _, src = llama
    o = ApplyOptions()
    with ExitStack() as stack:
        prepared = prepare(stack, Job.of(src, RULES, o), o)
        layout = lay_out(prepared, OutputRequest.of(f"{tmp_path / 'out'}/", o))
        with pytest.raises(UsageError, match="no output shard 'model-9.safetensors'"):
            layout.files_of(["model-9.safetensors"])
