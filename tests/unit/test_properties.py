"""Property-based tests: the decoder, the .npy reader, the desired-state parser, topic templates.

Whatever bytes arrive, the decoder answers with a Reading or a ReadingError, never
anything else; whatever document arrives, the parser answers with a DesiredState or
an UpdateError; templates render what a plain reference rendering says.
"""

from __future__ import annotations

import io
import json
import re
import string
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeinfer.errors import ReadingError, UpdateError
from edgeinfer.pipeline.decode import Decoder
from edgeinfer.pipeline.fast_json import FastReadings
from edgeinfer.pipeline.npy import load_npy
from edgeinfer.runtimes.base import TensorSpec
from edgeinfer.topics import TopicTemplate
from edgeinfer.updates.desired import parse_desired

PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPECS = [
    (TensorSpec("x", np.dtype(np.float32), (None, 3)),),
    (TensorSpec("k", np.dtype(np.int32), ("batch", 2)),),
    (TensorSpec("u", np.dtype(np.uint8), (1, 4)),),
    (TensorSpec("b", np.dtype(np.bool_), (None,)),),
    (
        TensorSpec("x", np.dtype(np.float16), (None, 2)),
        TensorSpec("n", np.dtype(np.int64), (None, 1)),
    ),
]
DECODERS = [Decoder(spec, 4096) for spec in SPECS]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=40,
)
readings = st.one_of(
    json_values,
    st.fixed_dictionaries({"features": json_values}, optional={"id": json_values}),
    st.fixed_dictionaries(
        {"inputs": st.dictionaries(st.sampled_from(["x", "k", "n", "u", "b", "z"]), json_values)}
    ),
)


def decodes_or_refuses(decoder: Decoder, payload: bytes) -> None:
    try:
        reading = decoder.decode(payload)
    except ReadingError as exc:
        assert exc.code and exc.reason
        return
    for spec in SPECS[DECODERS.index(decoder)]:
        arr = reading.feeds[spec.name]
        assert arr.dtype == spec.dtype
        assert len(arr) == reading.rows >= 1


@PROFILE
@given(st.binary(max_size=600), st.sampled_from(DECODERS))
@example(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',  ", DECODERS[0])
@example(b'{"features": [1e999, 1, 2]}', DECODERS[0])
@example(b'{"inputs": {"k": [[99999999999999999999999, 1]]}}', DECODERS[1])
def test_any_bytes_decode_or_are_refused_with_a_reading_error(
    payload: bytes, decoder: Decoder
) -> None:
    decodes_or_refuses(decoder, payload)


@PROFILE
@given(readings, st.sampled_from(DECODERS))
def test_any_json_document_decodes_or_is_refused_with_a_reading_error(
    doc: Any, decoder: Decoder
) -> None:
    decodes_or_refuses(decoder, orjson.dumps(doc))


def general_only(decoder: Decoder) -> Decoder:
    """The same decoder without its simdjson fast path."""
    twin = Decoder(decoder._inputs, 4096)
    twin._fast = None
    return twin


FLOAT_DECODERS = [d for d in DECODERS if d._fast is not None]
SLOW_TWINS = {id(d): general_only(d) for d in FLOAT_DECODERS}
numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.booleans() | st.none()
near_matrices = st.one_of(
    st.lists(numbers, max_size=8),
    st.lists(st.lists(numbers | st.lists(numbers, max_size=2), max_size=4), max_size=4),
)
common_readings = st.one_of(
    near_matrices,
    st.fixed_dictionaries(
        {"features": near_matrices},
        optional={"id": json_values, "ts": json_values, "extra": json_values},
    ),
)


def outcome(decoder: Decoder, payload: bytes) -> Any:
    try:
        reading = decoder.decode(payload)
    except ReadingError as exc:
        return ("refused", exc.code, exc.reason, exc.rid)
    feeds = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in reading.feeds.items()}
    return ("answered", feeds, reading.rows, reading.id, reading.ts, reading.bucket)


@PROFILE
@given(common_readings, st.sampled_from(FLOAT_DECODERS))
@example({"features": [[[1.0], 2.0], [3.0, 4.0]]}, FLOAT_DECODERS[0])  # nesting as_buffer flattens
@example({"features": [1.0, [2.0]], "id": "[x"}, FLOAT_DECODERS[0])
@example([[1.0, 2.0, 3.0], [4.0], [5.0, 6.0]], FLOAT_DECODERS[0])  # ragged, 3x2 values
def test_the_fast_json_path_answers_exactly_as_the_general_one(doc: Any, decoder: Decoder) -> None:
    payload = json.dumps(doc).encode()  # orjson cannot write integers beyond 64 bits
    assert outcome(decoder, payload) == outcome(SLOW_TWINS[id(decoder)], payload)


def test_the_fast_path_takes_the_common_reading_and_leaves_the_rest_to_the_general_one() -> None:
    fast = FastReadings()
    found = fast.read(b'{"id": "a-1", "ts": 1.5, "features": [[1, 2.5], [3, -4e-3]]}')
    assert found is not None
    numbers, rid, ts = found
    np.testing.assert_array_equal(numbers, [[1.0, 2.5], [3.0, -4e-3]])
    assert (rid, ts) == ("a-1", 1.5)
    assert fast.read(b"[1, 2, 3]") is not None
    for payload in (
        b'{"features": [[[1], 2], [3, 4]]}',  # as_buffer would flatten it to 2 x 2
        b'{"features": [[1, 2, 3], [4], [5, 6]]}',  # ragged, 6 values
        b'{"features": [1, "2"]}',
        b'{"features": [1, null]}',
        b'{"features": [1], "other": 2}',
        b'{"features": [1], "features": [2]}',
        b'{"features": [1], "id": {"a": 1}}',
        b'{"features": [1], "id": "[x]"}',
        b'{"inputs": {"x": [1]}}',
        b"[1e999]",
        b"not json",
    ):
        assert fast.read(payload) is None, payload


@PROFILE
@given(
    st.sampled_from(FLOAT_DECODERS),
    st.sampled_from(
        [
            b'{"features": [1, 2, 3], "features": [4, 5, 6]}',
            b'{"id": 1, "features": [[1, 2, 3]], "id": 2}',
        ]
    ),
)
def test_duplicate_keys_are_read_as_the_general_path_reads_them(
    decoder: Decoder, payload: bytes
) -> None:
    assert outcome(decoder, payload) == outcome(SLOW_TWINS[id(decoder)], payload)


@PROFILE
@given(
    hnp.arrays(
        np.float32,
        st.integers(1, 5).map(lambda n: (n, 3)),
        elements=st.floats(-3.0000000054977558e38, 3.0000000054977558e38, width=32),
    )
)
def test_a_valid_array_comes_through_unchanged_as_json_and_as_npy(arr: np.ndarray) -> None:
    decoder = DECODERS[0]
    from_json = decoder.decode(orjson.dumps({"features": arr.tolist()})).feeds["x"]
    buf = io.BytesIO()
    np.save(buf, arr)
    from_npy = decoder.decode(buf.getvalue()).feeds["x"]
    np.testing.assert_array_equal(from_json, arr)
    np.testing.assert_array_equal(from_npy, arr)


@PROFILE
@given(
    hnp.arrays(
        hnp.scalar_dtypes(),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    ),
    st.integers(0, 80),
    st.binary(max_size=8),
)
def test_the_npy_reader_reads_what_numpy_saves_and_refuses_what_is_cut_or_changed(
    arr: np.ndarray, cut: int, junk: bytes
) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    np.testing.assert_array_equal(load_npy(data), arr)
    for broken in (data[: len(data) - 1 - cut % len(data)], data + junk[:1] if junk else data[:-1]):
        try:
            out = load_npy(broken)
        except ReadingError as exc:
            assert exc.code == "bad_npy"
        else:
            assert out.size * out.dtype.itemsize == len(broken) - (len(data) - arr.nbytes)


documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
model_parts = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["har", "../x", "", "a" * 70, 5]),
        "version": st.sampled_from(["1.0.0", "a..b", "/abs", None]),
        "url": st.sampled_from(["https://x/m.onnx", "file:///m", "ftp://x", 7]),
        "sha256": st.sampled_from(["0" * 64, "xyz", None]),
        "size": st.sampled_from([10, 0, -1, True, "10"]),
        "format": st.sampled_from(["onnx", "tflite", "pt"]),
    },
)
desired_docs = st.fixed_dictionaries(
    {"model": model_parts},
    optional={
        "labels": documents,
        "self_test": documents,
        "sequence": documents,
        "signature": documents,
        "target": documents,
    },
)


@PROFILE
@given(st.one_of(documents, desired_docs))
def test_any_desired_document_parses_or_is_refused_with_an_update_error(doc: Any) -> None:
    try:
        state = parse_desired(orjson.dumps(doc), ("https", "file"))
    except UpdateError as exc:
        assert str(exc)
        return
    assert state.name == doc["model"]["name"]


levels = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=6)
topics = st.lists(levels, min_size=1, max_size=5).map("/".join)
templates = st.lists(
    st.sampled_from(["{topic}", "{module_id}", "{1}", "{2}", "{4}", "out", "/", "a-b"]),
    min_size=1,
    max_size=6,
).map("".join)


def reference_render(template: str, topic: str, module_id: str) -> str:
    parts = topic.split("/")

    def field(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "topic":
            return topic
        if name == "module_id":
            return module_id
        index = int(name) - 1
        return parts[index] if index < len(parts) else "_"

    return re.sub(r"\{(\w+)\}", field, template)


@PROFILE
@given(templates, topics, levels)
def test_a_template_renders_what_the_reference_rendering_says(
    template: str, topic: str, module_id: str
) -> None:
    rendered = TopicTemplate.parse(template).render(topic, module_id)
    assert rendered == reference_render(template, topic, module_id)
    assert "+" not in rendered and "#" not in rendered


@PROFILE
@given(st.text(max_size=30))
def test_any_template_text_parses_or_is_refused_with_a_value_error(text: str) -> None:
    try:
        template = TopicTemplate.parse(text)
    except ValueError:
        return
    assert template.render("a/b/c", "m")


@pytest.mark.parametrize("template", ["inference/{1}/{topic}", "x/{3}/{2}", "{module_id}/{1}"])
def test_numbered_levels_render_and_a_missing_level_is_an_underscore(template: str) -> None:
    assert TopicTemplate.parse(template).render("a/b", "m") == reference_render(
        template, "a/b", "m"
    )
    assert TopicTemplate.parse("inference/{1}/{topic}").render("s/g/v", "m") == "inference/s/s/g/v"
