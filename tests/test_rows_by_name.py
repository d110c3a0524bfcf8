"""Rows mapped by token string or class name (issue 15 item 6): the pure functions of
`reinit/transforms/vocab.py` (tokenizer files read as plain files) and `rows.py` (the mapping,
the new rows).

Internal: also tests reinit.schemes, reinit.schemes.transformer, reinit.transforms.rows,
reinit.transforms.vocab directly (not the `reinit` API).
"""

from __future__ import annotations

import json

import pytest
import torch

from reinit.errors import TransplantError
from reinit.schemes import bind_scheme, generate, seed_for
from reinit.schemes.transformer import mean_resize_rows
from reinit.transforms.rows import KEEP, MEAN_RESIZE, map_rows, remap_rows
from reinit.transforms.vocab import labels_of, read_vocab


def _tokjson(path, vocab, added=(), kind="BPE"):
    path.write_text(
        json.dumps(
            {
                "version": "1.0",
                "added_tokens": [{"id": i, "content": c, "special": True} for c, i in added],
                "model": {"type": kind, "vocab": vocab},
            }
        )
    )
    return path


def test_tokenizer_json_bpe_unigram_vocab_txt_and_vocab_json(tmp_path):
    bpe = _tokjson(tmp_path / "tokenizer.json", {"a": 0, "b": 1}, added=[("<s>", 2)])
    assert read_vocab(bpe) == {"a": 0, "b": 1, "<s>": 2}
    (tmp_path / "u").mkdir()
    uni = _tokjson(
        tmp_path / "u" / "tokenizer.json", [["<unk>", 0.0], ["▁x", -1.5]], kind="Unigram"
    )
    assert read_vocab(uni) == {"<unk>": 0, "▁x": 1}
    txt = tmp_path / "vocab.txt"
    txt.write_bytes(b"[PAD]\n##a\r\nb c\n\n")  # universal newlines, as transformers
    assert read_vocab(txt) == {"[PAD]": 0, "##a": 1, "b c": 2, "": 3}
    vj = tmp_path / "vocab.json"
    vj.write_text(json.dumps({"Ġthe": 1, "!": 0}))
    assert read_vocab(vj) == {"Ġthe": 1, "!": 0}


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "not valid JSON"),
        ('{"model": {"type": "BPE"}}', "has no vocab"),
        ('{"model": {"vocab": {"a": -1}}}', "not a non-negative integer"),
        ('{"model": {"vocab": [["a", 0], 5]}}', "not a [token, score] pair"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_malformed_tokenizer_files_are_refused(tmp_path, content, says):
    bad = tmp_path / "tokenizer.json"
    bad.write_text(content)
    with pytest.raises(TransplantError, match=f"vocab file {bad}") as e:
        read_vocab(bad)
    assert says in str(e.value) and e.value.exit_code == 2


def test_missing_vocab_file_says_to_pass_it(tmp_path):
    with pytest.raises(TransplantError, match="give vocab=PATH / src_vocab=PATH"):
        read_vocab(tmp_path / "nope.json")


def test_map_rows_by_token_with_padding_rows_and_wrong_files():
    src = {"a": 0, "b": 1, "c": 2}
    tgt = {"c": 0, "z": 1, "a": 2}
    m = map_rows(src, tgt, 3, 5, where="t")
    assert m.sources == (2, -1, 0, -1, -1)  # rows 3, 4: padding past the tokenizer: new
    assert (m.copied, m.new) == (2, 3) and m.note(
        MEAN_RESIZE
    ) == "rows: 2 copied, 3 new (mean_resize)"
    with pytest.raises(
        TransplantError, match="source vocab gives 'c' id 2, but the source tensor has 2 rows"
    ):
        map_rows(src, tgt, 2, 5, where="t")
    with pytest.raises(TransplantError, match="target vocab gives 'a' id 2"):
        map_rows(src, tgt, 3, 2, where="t")


def test_remap_copies_rows_byte_identically_and_mean_resizes_the_rest():
    torch.manual_seed(0)
    src = torch.randn(6, 4, dtype=torch.float16)
    m = map_rows({str(i): i for i in range(6)}, {"5": 0, "new": 1, "0": 2, "2": 3}, 6, 4, where="t")
    target = torch.zeros(4, 4, dtype=torch.float16)
    out = remap_rows(
        src, m, MEAN_RESIZE, name="emb", shape=(4, 4), dtype=torch.float16, seed=3, target=target
    )
    assert out[0].view(torch.int16).equal(src[5].view(torch.int16))
    assert torch.equal(out[2], src[0]) and torch.equal(out[3], src[2])
    old = src.float()[torch.tensor([5, 0, 2])]
    want = mean_resize_rows(old, 1, torch.Generator().manual_seed(seed_for(3, "emb")))
    assert torch.equal(out[1], want[0].half())  # the tensor's own generator: reproducible
    again = remap_rows(
        src, m, MEAN_RESIZE, name="emb", shape=(4, 4), dtype=torch.float16, seed=3, target=target
    )
    assert torch.equal(out, again)


def test_new_rows_keep_the_target_or_take_a_schemes_own_values():
    src = torch.randn(3, 2)
    m = map_rows({"a": 0}, {"a": 1, "b": 0}, 3, 3, where="t")
    target = torch.full((3, 2), 7.0)
    kept = remap_rows(
        src, m, KEEP, name="w", shape=(3, 2), dtype=torch.float32, seed=0, target=target
    )
    assert torch.equal(kept[1], src[0]) and (kept[[0, 2]] == 7).all()
    normal = bind_scheme("normal", (), {"std": 0.02})
    drawn = remap_rows(
        src, m, normal, name="w", shape=(3, 2), dtype=torch.float32, seed=0, target=target
    )
    plain = generate(normal, "w", (3, 2), torch.float32, 0)  # what --rule w=normal(std=0.02) writes
    assert torch.equal(drawn[[0, 2]], plain[[0, 2]]) and torch.equal(drawn[1], src[0])


def test_a_bias_is_mean_resized_as_rows_of_width_one():
    src = torch.tensor([1.0, 2.0, 3.0])
    m = map_rows({"x": 0, "y": 1, "z": 2}, {"y": 0, "x": 1, "new": 2}, 3, 3, where="t")
    out = remap_rows(
        src,
        m,
        MEAN_RESIZE,
        name="b",
        shape=(3,),
        dtype=torch.float32,
        seed=0,
        target=torch.zeros(3),
    )
    assert out[:2].tolist() == [2.0, 1.0] and abs(out[2].item() - 1.5) < 1e-3


def test_remap_refuses_other_dims_and_a_mean_of_nothing():
    m = map_rows({"a": 0}, {"b": 0}, 1, 2, where="t")
    with pytest.raises(TransplantError, match="maps dim 0 only"):
        remap_rows(
            torch.zeros(1, 3),
            m,
            KEEP,
            name="w",
            shape=(2, 4),
            dtype=torch.float32,
            seed=0,
            target=torch.zeros(2, 4),
        )
    with pytest.raises(TransplantError, match="no row's name is in both vocabularies"):
        remap_rows(
            torch.zeros(1, 3),
            m,
            MEAN_RESIZE,
            name="w",
            shape=(2, 3),
            dtype=torch.float32,
            seed=0,
            target=torch.zeros(2, 3),
        )


def test_labels_of_id2label():
    assert labels_of({"id2label": {"0": "cat", "1": "dog"}}, "t", "source") == {"cat": 0, "dog": 1}
    with pytest.raises(TransplantError, match="needs id2label in the target's config.json"):
        labels_of({}, "t", "target")
    with pytest.raises(TransplantError, match="names 'cat' twice"):
        labels_of({"id2label": {"0": "cat", "1": "cat"}}, "t", "source")
