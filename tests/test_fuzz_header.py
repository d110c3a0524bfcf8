"""Fuzzing the safetensors header parser (issue #7 item 3): any byte string gives a valid parse or
a `CheckpointError`, never another exception. Bounded (max_examples) so it runs in CI.

Internal: also tests reinit.io.formats._safetensors_format directly (not the `reinit` API).
"""

from __future__ import annotations

import json
import struct
import tempfile

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from reinit.errors import CheckpointError
from reinit.io.formats._safetensors_format import Header, code_dtypes, parse_header_bytes

# Hypothesis keeps caches in ./.hypothesis; tests never write to the working folder. The
# folder is removed when the test process ends.
_HOME = tempfile.TemporaryDirectory(prefix="reinit-hypothesis-")
set_hypothesis_home_dir(_HOME.name)

# bounded for CI; database=None keeps hypothesis from writing .hypothesis/ into the working folder
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def parse(raw: bytes, file_size: int | None = None) -> Header | None:
    try:
        header = parse_header_bytes(raw, len(raw) if file_size is None else file_size, "fuzz")
    except CheckpointError as e:
        assert str(e).startswith("fuzz: ")
        return None
    # a parse we accept is a consistent one: tensors tile the data section exactly
    pos = header.data_start
    for t in header.tensors:
        assert t.start == pos and t.end >= t.start
        pos = t.end
        # ...and one torch can hold (issue #16: dims of 2**62 or bigints crashed torch), with
        # names and metadata that can be printed and written back (no lone surrogates)
        torch.empty(t.shape, dtype=t.dtype, device="meta")
        t.name.encode("utf-8")
    for k, v in header.metadata.items():
        (k + v).encode("utf-8")
    assert pos == header.file_size
    return header


@SETTINGS
@given(st.binary(max_size=512))
def test_any_bytes(raw):
    parse(raw)


@SETTINGS
@given(st.binary(max_size=400), st.binary(max_size=64))
def test_any_header_body_with_a_correct_length(body, data):
    parse(struct.pack("<Q", len(body)) + body + data)


@SETTINGS
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2**64 - 1))
def test_any_length_prefix(body, n):
    raw = struct.pack("<Q", n) + body
    parse(raw)
    parse(raw, file_size=n + 8)  # the size claims the header is there; the bytes are not


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)

entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([*code_dtypes(), "F31", "", "f32"]) | json_values,
        "shape": st.lists(st.integers(min_value=-2, max_value=6), max_size=3)
        | st.lists(st.sampled_from([0, 1, 2**31, 2**61, 2**62, 2**63, 2**64, 2**70]), max_size=3)
        | json_values,
        "data_offsets": st.lists(st.integers(min_value=-4, max_value=80), min_size=0, max_size=3)
        | json_values,
    }
)


names = st.text(max_size=6) | st.sampled_from(["a\ud800", "\udc00", "x\ud83d"])


@SETTINGS
@given(
    st.dictionaries(names, entries | json_values, max_size=4),
    st.one_of(st.none(), json_values),
    st.integers(min_value=0, max_value=96),
)
def test_structured_headers(doc, meta, data_len):
    """Near-valid headers reach the deeper checks (dtype, shape, offsets, tiling)."""
    if meta is not None:
        doc = {**doc, "__metadata__": meta}
    body = json.dumps(doc, allow_nan=True).encode()
    parse(struct.pack("<Q", len(body)) + body + bytes(data_len))


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["F32", "F16", "I8", "BOOL"]), st.lists(st.integers(0, 4), max_size=3)
        ),
        min_size=1,
        max_size=4,
    ),
    st.data(),
)
def test_valid_headers_parse_and_single_byte_edits_never_crash(specs, data):
    sizes = {"F32": 4, "F16": 2, "I8": 1, "BOOL": 1}
    doc, pos = {}, 0
    for i, (code, shape) in enumerate(specs):
        n = sizes[code]
        for d in shape:
            n *= d
        doc[f"t{i}"] = {"dtype": code, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    body = json.dumps(doc).encode()
    raw = struct.pack("<Q", len(body)) + body + bytes(pos)
    header = parse(raw)
    assert header is not None and len(header.tensors) == len(specs)
    i = data.draw(st.integers(0, len(raw) - 1))
    b = data.draw(st.integers(0, 255))
    parse(raw[:i] + bytes([b]) + raw[i + 1 :])
    parse(raw[:i])
