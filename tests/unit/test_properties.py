"""Property-based tests (Hypothesis, derandomized and bounded): inputs nobody wrote by hand reach the
reading, answer, announcement and configuration paths, and every one ends as a value or a clear,
named refusal, never an exception from inside."""

from __future__ import annotations

import math
import pickle

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.label_join import LabelJoiner
from operators.parse import ReadingParser
from operators.windowing import SlidingWindower
from schemas import DeadLetter, DriftEvent, Label, ModelSnapshot, ReviewRequest, SchemaError, SensorReading
from schemas.base import finite_floats, require_id
from schemas.blocks import SampleBlock
from settings import Config, ConfigError, load_config

BOUNDED = settings(derandomize=True, max_examples=300, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])
CHANNELS = ["ax", "ay", "az"]
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)
near_readings = st.fixed_dictionaries(
    {"device_id": st.text(min_size=0, max_size=140) | scalars,
     "ts": st.integers(min_value=-5, max_value=2**66) | scalars,
     "values": st.lists(st.floats() | st.integers(min_value=-2**1100 // 2**1000, max_value=2**1100)
                        | scalars, min_size=0, max_size=5)
     | st.dictionaries(st.sampled_from(CHANNELS + ["bz"]), st.floats() | scalars, max_size=4)},
    optional={"seq": st.integers(min_value=-3, max_value=2**64) | scalars, "label": scalars,
              "schema_version": scalars, "extra": scalars})


near_blocks = st.fixed_dictionaries(
    {"device_id": st.sampled_from(["d", ""]) | scalars,
     "ts": st.integers(min_value=-5, max_value=2**54) | st.lists(st.integers(min_value=-5, max_value=2**54), max_size=6),
     "values": st.lists(st.lists(st.floats() | st.integers(min_value=-2**70, max_value=2**70) | scalars,
                                 min_size=2, max_size=4), min_size=0, max_size=6)
     | st.dictionaries(st.sampled_from(CHANNELS + ["bz"]), st.lists(st.floats() | scalars, max_size=6), max_size=4)},
    optional={"interval_ms": st.floats() | st.integers(min_value=-5, max_value=2**60) | scalars, "seq": scalars,
              "label": scalars, "labels": st.lists(scalars, max_size=6)})


def encode(obj) -> bytes:
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):  # NaN, huge ints: send them as Python's JSON would
        import json

        return json.dumps(obj).encode()


@BOUNDED
@given(raw=st.binary(max_size=200) | near_readings.map(encode) | near_blocks.map(encode) | json_values.map(encode))
def test_any_payload_becomes_a_reading_or_a_dead_letter_that_keeps_its_contract(raw):
    parser = ReadingParser(CHANNELS, "sensor-readings", max_bytes=4096, max_abs=1e9, max_future_ms=600_000)
    out = parser.parse(raw, 0, 1, now_ms=1_800_000_000_000)
    if isinstance(out, DeadLetter):
        again = DeadLetter.decode(out.encode())
        assert again.reason == out.reason and again.offset == 1 and out.reason
    elif isinstance(out, SampleBlock):  # every sample checked: 3 finite bounded values, times increasing
        assert out.values.shape == (len(out), 3) and out.values.dtype == np.float32
        assert np.isfinite(out.values).all() and (np.abs(out.values) <= 1e9).all()
        assert (np.diff(out.ts) > 0).all() and 0 <= out.ts[0] and out.ts[-1] <= 2**53 - 1
        assert out.labels is None or len(out.labels) == len(out)
    else:
        assert isinstance(out, SensorReading) and len(out.values) == 3
        assert all(abs(v) <= 1e9 for v in out.values) and 0 <= out.ts <= 2**53 - 1


def _finite_floats_one_by_one(values: list, max_abs: float) -> list[float] | str:
    """What ``finite_floats`` must give, checked one element at a time: the floats, or the first bad index."""
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"values[{i}]"
        try:
            f = float(v)
        except OverflowError:
            return f"values[{i}]"
        if not math.isfinite(f) or abs(f) > max_abs:
            return f"values[{i}]"
    return [float(v) for v in values]


@BOUNDED
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=12)  # floats only: the fast path
       | st.lists(st.floats(-1e308, 1e308), max_size=12)
       | st.lists(st.floats() | st.integers(min_value=-2**1100, max_value=2**1100) | st.booleans(), max_size=12),
       st.sampled_from([math.inf, 1e9, 1.0]))
def test_finite_floats_takes_a_list_exactly_when_each_element_passes_alone(values, max_abs):
    expected = _finite_floats_one_by_one(values, max_abs)
    try:
        got = finite_floats(values, "values", max_abs)
    except SchemaError as exc:
        assert exc.field == expected
    else:
        assert got == expected and all(type(v) is float for v in got) and got is not values


@BOUNDED
@given(st.text(max_size=40))
def test_an_id_is_refused_exactly_when_it_is_empty_long_or_holds_a_control_character(text):
    bad = not text or len(text) > 128 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
    try:
        assert require_id({"id": text}, "id") == text and not bad
    except SchemaError:
        assert bad


readings = st.builds(SensorReading, st.sampled_from(["a", "b"]), st.integers(min_value=0, max_value=2**53 - 1),
                     st.lists(st.floats(min_value=-1e9, max_value=1e9), min_size=2, max_size=2),
                     st.none() | st.integers(min_value=0, max_value=2**53 - 1), st.none() | st.sampled_from(["x"]))


@BOUNDED
@given(st.lists(readings, max_size=60))
def test_the_windower_takes_any_valid_readings_in_any_order_and_its_state_pickles(items):
    w = SlidingWindower(length=4, stride=2, n_channels=2, max_out_of_order_ms=50, max_seq_gap_buffer=4,
                        reset_gap_ms=1000, seq_gap_timeout_ms=100, max_seq_jump=1000)
    states = {"a": w.new_state(), "b": w.new_state()}
    for i, r in enumerate(items):
        windows, refused = w.add(states[r.device_id], r, ingest_ms=i)
        assert all(x.values.shape == (4, 2) and x.device_id == r.device_id for x in windows)
        assert all(u.reason for u in refused)
    for state in states.values():
        w.flush(pickle.loads(pickle.dumps(state)))


@BOUNDED
@given(json_values.map(encode) | st.binary(max_size=120))
def test_any_answer_or_announcement_decodes_or_is_refused_by_name(raw):
    joiner = LabelJoiner(["walk", "run"], ttl_ms=1000)
    for contract in (Label, ReviewRequest, ModelSnapshot, DriftEvent):
        try:
            message = contract.decode(raw)
        except SchemaError as exc:
            assert exc.field and str(exc)
            continue
        if contract is Label:
            joiner.on_label(joiner.new_state(), message, 0)


@BOUNDED
@given(st.dictionaries(st.sampled_from(["serving.window", "serving.audit_rate", "flink.parallelism",
                                        "topics.readings", "flink.exactly_once", "serving.max_abs_value",
                                        "nope.key", "serving.nope"]), st.text(max_size=12), max_size=4))
def test_any_flag_values_give_a_config_or_every_problem_named(flags):
    try:
        cfg = load_config(None, env={}, flags=flags)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert isinstance(cfg, Config)


_KEYS: dict = {}


def _signing_pair(tmp_dir: str):
    """One key pair for the whole run (Hypothesis calls the test hundreds of times)."""
    if not _KEYS:
        import os

        from model.signing import AnnouncementSigner, AnnouncementVerifier, generate_keys

        private, public = generate_keys(os.path.join(tmp_dir, "k"), os.path.join(tmp_dir, "k.pub"))
        _KEYS.update(signer=AnnouncementSigner.load(private), verifier=AnnouncementVerifier.load(public))
    return _KEYS["signer"], _KEYS["verifier"]


announcements = st.builds(ModelSnapshot, st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
                          st.integers(min_value=1, max_value=2**40), st.text(min_size=1, max_size=60),
                          st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
                          st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False),
                                          max_size=3),
                          st.none() | st.integers(min_value=1, max_value=2**40), st.integers(min_value=0, max_value=2**50))


@BOUNDED
@given(announcements, st.sampled_from(["version", "artifact_uri", "sha256", "metrics", "model_name", "none"]),
       json_values)
def test_a_signed_announcement_verifies_and_any_change_to_it_does_not(snapshot, field, junk):
    import dataclasses
    import tempfile

    signer, verifier = _signing_pair(tempfile.mkdtemp())
    signed = ModelSnapshot.decode(signer.sign(ModelSnapshot.decode(snapshot.encode())).encode())
    assert verifier.refusal(signed) is None
    changed = {"version": signed.version + 1, "artifact_uri": signed.artifact_uri + "x",
               "sha256": ("1" if signed.sha256[0] != "1" else "2") + signed.sha256[1:],
               "metrics": {**signed.metrics, "accuracy": 1.0} if signed.metrics.get("accuracy") != 1.0 else {},
               "model_name": signed.model_name + "x", "none": None}[field]
    if field != "none":
        assert verifier.refusal(dataclasses.replace(signed, **{field: changed})) is not None
    forged = dataclasses.replace(signed, signature=encode(junk).decode(errors="replace")[:200])
    assert verifier.refusal(forged) is not None


@BOUNDED
@given(st.lists(st.tuples(st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3), st.integers(0, 3)), max_size=60),
       st.floats(0.0, 0.5))
def test_the_lda_head_is_finite_for_any_labels_and_never_predicts_an_unseen_class(samples, decay):
    from model.slda import StreamingLDA

    lda = StreamingLDA(n_features=3, n_classes=4, decay=decay)
    for x, label in samples:
        lda.learn_one(np.asarray(x), label)
    W, b = lda.weights()
    assert np.isfinite(W).all() and np.isfinite(b).all()
    seen = {label for _, label in samples}
    if seen:
        probe = np.asarray(samples[0][0])
        assert int(np.argmax(W @ probe + b)) in seen  # a class nobody labeled is never the answer
    restored = StreamingLDA.from_bytes(lda.to_bytes(), decay=decay)
    assert np.allclose(restored.weights()[0], W) and np.allclose(restored.weights()[1], b)


@BOUNDED
@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=400))
def test_a_shadow_never_wins_where_it_never_beats_the_version_in_service(pairs):
    """Whatever the answers, a shadow that is right only where serving is right too is never promoted on
    a clear win, and one that is never right where serving is wrong is promoted only as 'not worse'."""
    from operators.shadow import ShadowTrial

    trial = ShadowTrial(version=2, serving=1, z=1.645, min_answers=20, max_answers=200)
    for serving_right, shadow_right in pairs:
        verdict = trial.observe(serving_right, shadow_right and serving_right)
        if verdict is not None:
            assert trial.answers >= 20 and trial.wins == 0
            assert not verdict.promote or (trial.losses == 0 and trial.answers >= 200)
            break
