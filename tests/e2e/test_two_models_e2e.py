"""Two device types, two models, one running pair of jobs: BasicMotions wrist devices (six channels,
four activities, a trained v1 in the registry) and Wiimote gesture devices (one channel, ten gestures,
declared in the TOML file with no trained version: a cold start). Each model gets only its own devices'
windows, asks its own questions, learns, gates, versions and swaps on its own; readings of a device type
no model serves become dead letters with the reason. Killed hard and resumed from a checkpoint, the
serving job gives every device of both models every window once."""

from __future__ import annotations

import os
import signal
import threading
import time

import orjson
import pytest
from kafka import KafkaProducer

from control.replayer import replay
from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import TopicTail, produce
from labeling.simulated import run_simulated_labelers
from control.launcher import learning_job, serving_job
from model.registry import ModelRegistry
from recordings.importer import import_files
from recordings.store import DatasetStore, DatasetStream
from schemas import DeadLetter, ModelSnapshot, Prediction, ReviewRequest, Topics
from settings import load_config
from tests.e2e.helpers import collect, encoded, expected_window_ends, follow, replayed_readings, started
from tests.e2e.test_restart_e2e import latest_checkpoint
from tests.unit.test_recordings import wiimote_csv

pytestmark = pytest.mark.e2e
TOPICS = Topics()


def write_config(tmp_path, registry: str, classes: list[str]):
    config = tmp_path / "sensorloop.toml"
    config.write_text(f"""
[registry]
path = "{registry}"

[data]
dir = "{tmp_path / 'datasets'}"

[serving]
models = "basic-motions, wiimote"
confidence_threshold = 0.9
audit_rate = 0.5
review_budget_per_minute = 100000

[learning]
gate_every = 16
min_holdout = 16

[models.wiimote]
channels = ["acc_z"]
sample_rate_hz = 100
window = 32
stride = 8
classes = {classes!r}
devices = ["wii-*"]
d_model = 32
d_ff = 64
""".replace("'", '"'))
    return config


def served_new(records, name: str, after: int) -> bool:
    """Whether ``name`` served a version newer than ``after``."""
    return any(p["model_name"] == name and p["model_version"] > after for p in records[TOPICS.predictions])


def changed_type_refused(records) -> bool:
    return any("sends readings for model wiimote" in letter.reason for letter in records[TOPICS.dead_letters])


def test_two_models_side_by_side_each_learning_and_swapping_on_its_own(tmp_path, registry_copy):
    model, csv_path = wiimote_csv(tmp_path)
    config = write_config(tmp_path, registry_copy, list(model.classes))
    cfg = load_config(config)
    report = import_files([csv_path], model, DatasetStore(cfg.data.dir), "wii")
    assert report.imported, report.summary()
    registry = ModelRegistry(registry_copy)
    assert registry.versions("basic-motions") == [1] and registry.versions("wiimote") == []
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        serving, _ = started(lambda port: serving_job(broker.bootstrap, tmp_path / "serving.log", config=config,
                                                      state_dir=str(tmp_path / "ck-serving"), rest_port=port))
        learning, _ = started(lambda port: learning_job(broker.bootstrap, tmp_path / "learning.log", config=config,
                                                        state_dir=str(tmp_path / "ck-learning"), rest_port=port))
        stop = threading.Event()
        model_classes = {"basic-motions": list(registry.latest_metadata("basic-motions").spec["classes"]),
                         "wiimote": list(model.classes)}
        threads = [
            threading.Thread(target=replay, daemon=True, kwargs=dict(  # wrist devices name their type
                bootstrap=broker.bootstrap, topic=TOPICS.readings, rate=300, n_devices=8, stop=stop,
                device_type="basic-motions")),
            threading.Thread(target=replay, daemon=True, kwargs=dict(  # gesture devices match "wii-*"
                bootstrap=broker.bootstrap, topic=TOPICS.readings, rate=500, stop=stop,
                stream=DatasetStream(DatasetStore(cfg.data.dir).load("wii")))),
            threading.Thread(target=run_simulated_labelers, daemon=True, kwargs=dict(
                bootstrap=broker.bootstrap, topics=TOPICS, classes=model_classes["basic-motions"], delay_ms=200,
                stop=stop, model_classes=model_classes)),
        ]
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        now = int(time.time() * 1000)
        bad = [{"device_id": "thermo-1", "device_type": "thermostat", "ts": now, "values": [21.5]},
               {"device_id": "wii-9", "ts": now, "values": [1, 2, 3, 4, 5, 6]},  # a gesture device with six values
               {"device_id": "lamp-1", "ts": now, "values": [1.0]}]  # no type, matches no model's devices
        for reading in bad:
            producer.send(TOPICS.readings, key=reading["device_id"].encode(), value=orjson.dumps(reading))
        producer.flush()
        tail = TopicTail(broker.bootstrap, [TOPICS.predictions, TOPICS.review_requests, TOPICS.model_snapshots,
                                            TOPICS.dead_letters])
        decoders = {TOPICS.predictions: orjson.loads, TOPICS.review_requests: ReviewRequest.decode,
                    TOPICS.model_snapshots: ModelSnapshot.decode, TOPICS.dead_letters: DeadLetter.decode}
        changed_type_sent = False

        def step(records) -> bool:
            """Once wii-0 is served, it claims to be a wrist device; done when both models swapped and
            that reading was refused."""
            nonlocal changed_type_sent
            if not changed_type_sent and any(p["device_id"] == "wii-0" for p in records[TOPICS.predictions]):
                changed = {"device_id": "wii-0", "device_type": "basic-motions", "ts": int(time.time() * 1000),
                           "values": [0.0] * 6}  # a gesture device suddenly claims to be a wrist device
                producer.send(TOPICS.readings, key=b"wii-0", value=orjson.dumps(changed))
                producer.flush()
                changed_type_sent = True
            return (served_new(records, "basic-motions", 1) and served_new(records, "wiimote", 0)
                    and changed_type_refused(records))

        with serving, learning:
            for t in threads:
                t.start()
            try:
                records = follow(tail, decoders, step, 300, (serving, learning))
            finally:
                stop.set()
                tail.close()
                producer.close()
    predictions, letters = records[TOPICS.predictions], records[TOPICS.dead_letters]
    reviews, snapshots = records[TOPICS.review_requests], records[TOPICS.model_snapshots]
    by_model = {name: [p for p in predictions if p["model_name"] == name] for name in model_classes}
    counts = {name: len(items) for name, items in by_model.items()}
    versions = {name: sorted({p["model_version"] for p in items}) for name, items in by_model.items()}
    print(f"predictions per model {counts}, versions served {versions}, "
          f"announced {[(s.model_name, s.version) for s in snapshots]}")
    # each model got only its own devices' windows, and answered with its own classes
    assert counts["basic-motions"] > 100 and counts["wiimote"] > 100, counts
    assert all(p["device_id"].startswith("device-") for p in by_model["basic-motions"])
    assert all(p["device_id"].startswith("wii-") for p in by_model["wiimote"])
    for name, items in by_model.items():
        assert {p["label"] for p in items} <= set(model_classes[name]), name
    assert {len(r.channels) for r in reviews if r.model_name == "wiimote"} == {1}
    assert {len(r.channels) for r in reviews if r.model_name == "basic-motions"} == {6}
    # each learned and swapped on its own: basic-motions v2 from v1; wiimote v1 from a cold start
    assert served_new(records, "basic-motions", 1), (versions, learning.log_tail(60))
    assert served_new(records, "wiimote", 0), (versions, learning.log_tail(60))
    assert registry.metadata("basic-motions", 2).parent_version == 1
    first = registry.metadata("wiimote", 1)
    assert first.parent_version is None and "cold start" in first.note
    assert {s.model_name for s in snapshots} == {"basic-motions", "wiimote"}
    # readings no model takes: dead letters with the reason, the model named where one was chosen
    reasons = {letter.reason for letter in letters if letter.stage == "parse"}
    assert any("no served model takes device type 'thermostat'" in r for r in reasons), reasons
    assert any("models are served" in r for r in reasons), reasons
    six = [letter for letter in letters if "expected 1 channels, got 6" in letter.reason]
    assert six and six[0].model_name == "wiimote", reasons
    assert changed_type_refused(records), reasons  # a device's readings stay with one model


def test_two_models_survive_a_sigkill_each_device_keeping_its_model_s_window(tmp_path, registry_copy):
    """The serving job of two models killed hard mid-stream and resumed from its last checkpoint: every
    device of both models gets every window exactly once, those spanning the crash included, each
    scored by its own model (the per-model window, pending-batch and version state came back)."""
    config = write_config(tmp_path, registry_copy, [str(k) for k in range(1, 11)])
    first, second = wrist_readings(0) + gesture_readings(0), wrist_readings(40) + gesture_readings(40)
    before = expected_window_ends(first, 32, 8)
    everything = expected_window_ends(first + second, 32, 8)
    assert len(before) == 5 * 2 and len(everything) == 5 * 7  # 3 wrist and 2 gesture devices
    checkpoints = tmp_path / "ck"
    options = dict(config=config, state_dir=str(checkpoints), checkpoint_interval_ms=1000, exactly_once=True,
                   group_id="two-models-restart")
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job = serving_job(broker.bootstrap, tmp_path / "job-a.log", **options).start()
        try:
            produce(broker.bootstrap, TOPICS.readings, encoded(first))
            got = collect_committed(broker.bootstrap, len(before), job)
            assert len(got) == len(before)
            time.sleep(2.5)  # one more checkpoint, so the restored state is past these readings
        finally:
            os.killpg(job.process.pid, signal.SIGKILL)  # a crash: no clean shutdown
            job.process.wait()
        produce(broker.bootstrap, TOPICS.readings, encoded(second))
        restored = latest_checkpoint(checkpoints / "checkpoints" / "serving")
        job = serving_job(broker.bootstrap, tmp_path / "job-b.log", savepoint_path=str(restored), **options)
        with job:
            collect_committed(broker.bootstrap, len(everything), job)
            time.sleep(3)
            out = collect_committed(broker.bootstrap, len(everything) + 1, None, timeout_s=6)
    predictions = [Prediction.decode(raw) for raw in out]
    keys = [(p.device_id, p.window_end) for p in predictions]
    assert set(keys) == everything and len(keys) == len(set(keys)), "every window once"
    assert {p.device_id for p in predictions if p.model_name == "wiimote"} == {"wii-0", "wii-1"}
    assert {p.model_name for p in predictions if p.device_id.startswith("device-")} == {"basic-motions"}
    resumed = gesture_readings(40)[0]["ts"]
    spanning = [p for p in predictions if p.model_name == "wiimote" and p.window_start < resumed <= p.window_end]
    assert spanning, "windows spanning the crash prove the restored window state"


def wrist_readings(start: int) -> list[dict]:
    """BasicMotions readings of three wrist devices that name their type, 40 per device from ``start``."""
    return [{**r, "device_type": "basic-motions"} for r in replayed_readings(n_devices=3, per_device=40,
                                                                            start_seq=start)]


def gesture_readings(start: int) -> list[dict]:
    """40 one-channel readings per gesture device (``wii-0``, ``wii-1``: the devices pattern) from ``start``."""
    return [{"device_id": f"wii-{d}", "seq": k, "ts": 1_700_000_000_000 + 10 * k, "values": [float(k % 7) - 3.0]}
            for k in range(start, start + 40) for d in range(2)]


def collect_committed(bootstrap: str, count: int, job, timeout_s: float = 240) -> list[bytes]:
    """At least ``count`` committed predictions (or what came in ``timeout_s``)."""
    return [r.value for r in collect(bootstrap, {TOPICS.predictions: count}, timeout_s, job,
                                     "read_committed")[TOPICS.predictions]]
