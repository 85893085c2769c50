"""Serving path end to end: real Tansu broker, real Flink MiniCluster, official Kafka connector."""

import time

import orjson
import pytest

from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import produce, read_quiet
from schemas import DeadLetter, Prediction, ReviewRequest, Topics
from control.launcher import serving_job
from tests.e2e.helpers import collect, encoded, expected_window_ends, expected_windows, replayed_readings

pytestmark = pytest.mark.e2e
TOPICS = Topics()
BAD = [  # (payload, field the dead letter must name)
    (b"{this is not json", "$"),
    (b'{"device_id": "device-x", "values": [1, 2, 3, 4, 5, 6]}', "ts"),
    (b'{"device_id": "device-x", "ts": 5, "values": [1, NaN, 3, 4, 5, 6]}', "values[1]"),
    (b'{"device_id": "device-x", "ts": 5, "values": [1, 2, 3]}', "values"),
    (b'{"device_id": 17, "ts": 5, "values": [1, 2, 3, 4, 5, 6]}', "device_id"),
    (b'{"device_id": "device-x", "ts": 5, "values": "1;2;3;4;5;6"}', "values"),
    (b'{"device_id": "device-x", "ts": 5, "values": [1, 2, 3, 4, 5, 6], "firmware": "2.1"}', "firmware"),
    (b'{"device_id": "device-x", "ts": 5, "values": [1, 2, 3, 4, 5, 6], "pad": "' + b"x" * 70_000 + b'"}', "$"),
    (b'{"device_id": "device-x", "device_id": "device-y", "ts": 5, "values": [1, 2, 3, 4, 5, 6]}', "device_id"),
]


@pytest.fixture
def broker(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        ensure_topics(b.bootstrap, TOPICS)
        yield b


@pytest.mark.parametrize("layout", ["sharded", "per_device"])
def test_readings_to_predictions_reviews_and_dead_letters(broker, trained_registry, tmp_path, layout):
    """Either serving layout (``serving.layout``) serves every window once and dead-letters bad input."""
    first = replayed_readings(n_devices=8, per_device=64)
    second = replayed_readings(n_devices=8, per_device=64, start_seq=64)
    expected = expected_window_ends(first + second, window=32, stride=8)
    assert len(expected) == 8 * 13
    job = serving_job(broker.bootstrap, tmp_path / "job.log", registry=trained_registry,
                      state_dir=str(tmp_path / "ck"), confidence_threshold=0.999, audit_rate=0.0,
                      review_budget_per_minute=100_000, layout=layout)
    with job:
        produce(broker.bootstrap, TOPICS.readings, encoded(first))
        produce(broker.bootstrap, TOPICS.readings, [(b"device-x", raw) for raw, _ in BAD])
        # a replayed (duplicate) reading is refused by the windower, also as a dead letter
        produce(broker.bootstrap, TOPICS.readings, encoded(first[:1]))
        out = collect(broker.bootstrap, {TOPICS.dead_letters: len(BAD) + 1, TOPICS.predictions: 8 * 5},
                      timeout_s=180, job=job)
        # the job survived the bad input: later readings are still served
        produce(broker.bootstrap, TOPICS.readings, encoded(second))
        out = collect(broker.bootstrap, {TOPICS.predictions: len(expected), TOPICS.dead_letters: len(BAD) + 1},
                      timeout_s=180, job=job)
        assert job.alive()
        extra = read_quiet(broker.bootstrap, [TOPICS.review_requests], quiet_s=3)

    predictions = [Prediction.decode(r.value) for r in out[TOPICS.predictions]]
    assert {(p.device_id, p.window_end) for p in predictions} == expected
    assert len(predictions) == len(expected), "no window may be predicted twice"
    for record, p in zip(out[TOPICS.predictions], predictions):
        assert record.key == p.device_id.encode()
        assert p.model_name == "basic-motions" and p.model_version == 1
        assert abs(sum(p.probabilities.values()) - 1) < 1e-3 and p.label in p.probabilities
        assert p.window_end - p.window_start == 31 * 100 and p.latency_ms >= 0
    judged = [p for p in predictions if p.truth is not None]
    assert len(judged) > 0.5 * len(predictions)
    assert sum(p.label == p.truth for p in judged) / len(judged) > 0.7

    reviews = [ReviewRequest.decode(r.value) for r in extra]
    unsure = {f"{p.device_id}:{p.window_end}" for p in predictions if p.confidence < 0.999}
    assert {r.review_id for r in reviews} == unsure and len(reviews) == len(unsure)
    for r in reviews:
        assert r.reason == "low_confidence" and len(r.values) == 32 and len(r.values[0]) == 6
        assert r.channels == ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]

    letters = [DeadLetter.decode(r.value) for r in out[TOPICS.dead_letters]]
    assert len(letters) == len(BAD) + 1
    parse_letters = sorted((d for d in letters if d.stage == "parse"), key=lambda d: d.offset)
    assert [d.field for d in parse_letters] == [field for _, field in BAD]
    for d in letters:
        assert d.source_topic == TOPICS.readings and d.partition >= 0 and d.offset >= 0 and d.reason and d.raw
    assert any(d.stage == "window" and "already used" in d.reason for d in letters)
    assert any("exceeds the limit" in d.reason for d in letters)
    assert any("ambiguous" in d.reason for d in letters)
    assert all(orjson.loads(r.value)["schema_version"] == 1 for r in out[TOPICS.dead_letters])


def test_drift_event_raises_the_review_budget(broker, trained_registry, tmp_path):
    from infra.kafka_tools import TopicTail
    from schemas import DriftEvent

    first = replayed_readings(n_devices=8, per_device=64)
    second = replayed_readings(n_devices=8, per_device=64, start_seq=64)
    job = serving_job(broker.bootstrap, tmp_path / "job.log", registry=trained_registry,
                      state_dir=str(tmp_path / "ck"), confidence_threshold=1.0, audit_rate=0.0,
                      review_budget_per_minute=1,  # every window wants review; one per minute allowed
                      confidence_drift_delta=0.0)  # only the learning path's event may raise it here
    with job:
        produce(broker.bootstrap, TOPICS.readings, encoded(first))
        out = collect(broker.bootstrap, {TOPICS.predictions: 8 * 5}, timeout_s=180, job=job)
        tail = TopicTail(broker.bootstrap, [TOPICS.review_requests])
        time.sleep(2)
        assert len(tail.poll(1000)) <= 1, "the budget of 1/minute was exceeded"
        event = DriftEvent("basic-motions", "error", int(time.time() * 1000), 1, 6000, 60, 0.5)
        produce(broker.bootstrap, TOPICS.drift_events, [(b"basic-motions", event.encode())])
        time.sleep(3)  # the event travels on its own source
        produce(broker.bootstrap, TOPICS.readings, encoded(second))
        reviews = []
        deadline = time.monotonic() + 60
        while len(reviews) < 10 and time.monotonic() < deadline:
            reviews += tail.poll(500)
        tail.close()
    assert len(out[TOPICS.predictions]) >= 40
    assert len(reviews) >= 10, f"only {len(reviews)} review requests after the drift event"


def test_a_fall_in_served_confidence_is_published_as_a_drift(broker, trained_registry, tmp_path):
    """Serving watches its own confidence (ADWIN): after the gyroscopes pick up a +4.0 bias the
    model is less sure (0.99 -> ~0.93 on average), which the job publishes on drift-events."""
    from schemas import DriftEvent

    clean = replayed_readings(n_devices=8, per_device=240)
    drifted = replayed_readings(n_devices=8, per_device=960, start_seq=240)
    for r in drifted:
        r["values"] = [v + 4.0 if i >= 3 else v for i, v in enumerate(r["values"])]
    job = serving_job(broker.bootstrap, tmp_path / "job.log", registry=trained_registry,
                      state_dir=str(tmp_path / "ck"), audit_rate=0.0, max_batch=16)
    with job:
        produce(broker.bootstrap, TOPICS.readings, encoded(clean))
        n_clean = len(expected_window_ends(clean, window=32, stride=8))
        collect(broker.bootstrap, {TOPICS.predictions: n_clean}, timeout_s=180, job=job)
        quiet = collect(broker.bootstrap, {TOPICS.drift_events: 1}, timeout_s=3, job=job)[TOPICS.drift_events]
        assert quiet == [], "a drift was reported on the clean stream"
        produce(broker.bootstrap, TOPICS.readings, encoded(drifted))
        n_all = len(expected_window_ends(clean + drifted, window=32, stride=8))
        out = collect(broker.bootstrap, {TOPICS.predictions: n_all, TOPICS.drift_events: 1}, timeout_s=180, job=job)
    events = [DriftEvent.decode(r.value) for r in out[TOPICS.drift_events]]
    confidence = [(orjson.loads(r.value)["window_start"], orjson.loads(r.value)["confidence"])
                  for r in out[TOPICS.predictions]]
    first_drifted = drifted[0]["ts"]
    before = [c for start, c in confidence if start < first_drifted - 3200]
    after = [c for start, c in confidence if start >= first_drifted]
    summary = f"mean confidence {sum(before) / len(before):.3f} -> {sum(after) / len(after):.3f} ({len(after)} windows)"
    assert events and events[0].signal == "confidence" and events[0].model_version == 1, (events, summary)
    assert events[0].boost_budget_per_minute == 600  # serving raised its own review budget for a while
    print(summary)


def test_per_device_normalisation_through_the_job(broker, trained_registry, tmp_path):
    """``serving.device_normalisation_windows`` in the real job: one device sends through a sensor with
    another gain and offset per channel. Every window goes to review (audit rate 1), and each request
    carries the window as the model saw it: the device's first two windows as sent, every later one
    re-expressed by the statistics of the device's earlier windows, computed here from what was sent."""
    import numpy as np

    from operators.device_normalisation import DeviceNormaliser, adapt
    from operators.serving_model import load_from_registry

    readings = replayed_readings(n_devices=2, per_device=96)
    gain, offset = np.asarray([2.0, 3.0, 0.5, 2.5, 1.5, 4.0]), np.asarray([1.0, -2.0, 0.5, 3.0, -1.0, 0.0])
    for r in readings:
        if r["device_id"] == readings[0]["device_id"]:
            r["values"] = [round(float(v), 5) for v in np.asarray(r["values"]) * gain + offset]
    expected = expected_window_ends(readings, window=32, stride=8)
    job = serving_job(broker.bootstrap, tmp_path / "job.log", registry=trained_registry,
                      state_dir=str(tmp_path / "ck"), audit_rate=1.0, review_budget_per_minute=100_000,
                      device_normalisation_windows=2)
    with job:
        produce(broker.bootstrap, TOPICS.readings, encoded(readings))
        out = collect(broker.bootstrap, {TOPICS.review_requests: len(expected), TOPICS.predictions: len(expected)},
                      timeout_s=180, job=job)
    requests = {r.review_id: r for r in (ReviewRequest.decode(x.value) for x in out[TOPICS.review_requests])}
    assert {(r.device_id, r.window_end) for r in requests.values()} == expected
    reference = load_from_registry(trained_registry, "basic-motions").input_reference
    for device in {r["device_id"] for r in readings}:
        sent = np.asarray([r["values"] for r in readings if r["device_id"] == device], np.float32)
        ends = [r["ts"] for r in readings if r["device_id"] == device]
        norm, stats, compared = DeviceNormaliser(2), None, 0
        for i in range(31, len(sent), 8):
            window = sent[i - 31:i + 1]
            ref = norm.reference(stats)
            want = window if ref is None else adapt(window, ref, reference[0], reference[1])
            got = np.asarray(requests[f"{device}:{ends[i]}"].values, np.float32)
            np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
            compared += ref is not None
            stats = norm.observe(stats, window)
        assert compared == 7


def test_a_burst_too_small_for_a_batch_is_scored_once_the_readings_pause(broker, trained_registry, tmp_path):
    """A few devices' burst completes far fewer windows than a batch holds. With ``max_wait_ms`` and the
    checkpoint interval (whose marker also scores pending windows) at ten minutes, only the grouper's marker
    that the readings paused (``serving.quiet_ms``) can get them scored within the test: they come, each
    once; a second burst later is scored the same way."""
    first = replayed_readings(n_devices=4, per_device=40)
    second = replayed_readings(n_devices=4, per_device=24, start_seq=40)
    expected = expected_window_ends(first + second, window=32, stride=8)
    assert len(expected_window_ends(first, window=32, stride=8)) == 4 * 2 and len(expected) == 4 * 5
    job = serving_job(broker.bootstrap, tmp_path / "job.log", registry=trained_registry,
                      state_dir=str(tmp_path / "ck"), audit_rate=0.0, max_wait_ms=600_000,
                      checkpoint_interval_ms=600_000, quiet_ms=1)
    with job:
        produce(broker.bootstrap, TOPICS.readings, encoded(first))
        out = collect(broker.bootstrap, {TOPICS.predictions: 4 * 2}, timeout_s=180, job=job)
        produce(broker.bootstrap, TOPICS.readings, encoded(second))
        out = collect(broker.bootstrap, {TOPICS.predictions: len(expected)}, timeout_s=120, job=job)
        assert job.alive()
    keys = [(p.device_id, p.window_end) for p in map(Prediction.decode, (r.value for r in out[TOPICS.predictions]))]
    assert set(keys) == expected and len(keys) == len(expected), "every window once"


def test_an_int8_version_is_what_the_job_serves_with_serving_precision_int8(broker, registry_copy, tmp_path):
    """``serving.precision = "int8"`` in the real job: a version published with its INT8 graph is served from
    that graph. Every window is predicted once, and each prediction's probabilities are the INT8 graph's on that
    window (to the 6 decimals published), not the FP32 graph's. The job scores each window alone, as this test
    does: INT8 quantizes a batch's activations with the batch's range."""
    import numpy as np

    from model.datasets import load_basic_motions, sliding_windows
    from model.registry import INT8_FILE, ModelRegistry
    from model.spec import ModelSpec
    from model.train import encode_labels, load_network, publish_version
    from operators.serving_model import load_from_registry

    registry = ModelRegistry(registry_copy)
    v1 = registry.load("basic-motions", 1)
    spec = ModelSpec.from_dict(v1.metadata.spec)
    X, labels = sliding_windows(load_basic_motions("test"), 32, 16)
    meta = publish_version(registry, "basic-motions", load_network(spec, v1.weights_bytes), spec, {},
                           calibration=(X, encode_labels(labels, spec.classes)), int8_min_agreement=0.98)
    assert INT8_FILE in meta.artifacts
    readings = replayed_readings(n_devices=3, per_device=120)
    expected = expected_windows(readings, window=32, stride=8)
    # each window scored alone: a window's INT8 probabilities move a little with the windows batched beside it
    job = serving_job(broker.bootstrap, tmp_path / "job.log", registry=registry_copy, state_dir=str(tmp_path / "ck"),
                      audit_rate=0.0, precision="int8", max_batch=1)
    with job:
        produce(broker.bootstrap, TOPICS.readings, encoded(readings))
        out = collect(broker.bootstrap, {TOPICS.predictions: len(expected)}, timeout_s=180, job=job)
        assert job.alive()
    predictions = {(p.device_id, p.window_end): p for p in map(Prediction.decode,
                                                               (r.value for r in out[TOPICS.predictions]))}
    assert set(predictions) == set(expected) and len(out[TOPICS.predictions]) == len(expected), "every window once"
    assert {p.model_version for p in predictions.values()} == {meta.version}
    keys = sorted(expected)
    windows = [np.asarray([r["values"] for r in expected[key]], np.float32) for key in keys]
    runners = {p: load_from_registry(registry_copy, "basic-motions", meta.version, precision=p).runner
               for p in ("int8", "fp32")}
    graphs = {p: np.concatenate([runner.predict_proba(w[None]) for w in windows])  # each window alone
              for p, runner in runners.items()}
    served = np.asarray([[predictions[k].probabilities[c] for c in spec.classes] for k in keys])
    assert np.abs(served - graphs["int8"]).max() < 2e-6, "the job's probabilities are the INT8 graph's"
    assert np.abs(served - graphs["fp32"]).max() > 1e-3  # the two graphs differ: the test tells which one served
