"""Sample blocks through the real serving job: devices sending 25 samples per message, beside devices
sending one, get exactly the windows their samples make, once each; a block with one bad sample is a
dead letter naming that sample, and none of its samples is used (sent again, fixed, it fits in as if
the bad one had never come)."""

from __future__ import annotations

import orjson
import pytest

from control.launcher import serving_job
from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import produce
from operators.replay import BlockPacker
from schemas import DeadLetter, Prediction, Topics
from tests.e2e.helpers import collect, encoded, expected_window_ends, replayed_readings

pytestmark = pytest.mark.e2e
TOPICS = Topics()


def test_blocks_and_single_readings_make_every_window_once_and_a_bad_block_is_refused_whole(tmp_path,
                                                                                            trained_registry):
    readings = replayed_readings(n_devices=6, per_device=150)
    blocked = [r for r in readings if r["device_id"] in ("device-000", "device-001", "device-002")]
    singles = [r for r in readings if r not in blocked]
    packer = BlockPacker(25)
    blocks = [b for b in map(packer.add, blocked) if b is not None] + packer.drain()
    assert len(blocks) == 3 * 6
    # device-002's fourth block carries a text value in its sample 3: refused whole; the device then
    # sends it again, fixed, and the windows go on as if the bad one had never come
    bad_index = next(i for i, b in enumerate(blocks) if b["device_id"] == "device-002" and b["seq"] == 75)
    bad = orjson.loads(orjson.dumps(blocks[bad_index]))
    bad["values"][3][2] = "0.5"
    messages = [(b["device_id"].encode(), orjson.dumps(b)) for b in blocks[:bad_index]]
    messages += [(b"device-002", orjson.dumps(bad))]
    messages += [(b["device_id"].encode(), orjson.dumps(b)) for b in blocks[bad_index:]]
    expected = expected_window_ends(readings, window=32, stride=8)
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        job = serving_job(broker.bootstrap, tmp_path / "job.log", registry=trained_registry,
                          state_dir=str(tmp_path / "ck"), audit_rate=0.0,
                          scoring_thread=True)  # the other end-to-end tests score on the task thread (the default)
        with job:
            produce(broker.bootstrap, TOPICS.readings, messages + encoded(singles))
            out = collect(broker.bootstrap, {TOPICS.predictions: len(expected), TOPICS.dead_letters: 1},
                          timeout_s=180, job=job)
            assert job.alive()
    predictions = [Prediction.decode(r.value) for r in out[TOPICS.predictions]]
    keys = [(p.device_id, p.window_end) for p in predictions]
    assert set(keys) == expected and len(keys) == len(expected), "every window once"
    accuracy = sum(p.label == p.truth for p in predictions) / len(predictions)
    assert accuracy > 0.7, accuracy  # the blocks' windows are the real recordings, in order
    letters = [DeadLetter.decode(r.value) for r in out[TOPICS.dead_letters]]
    assert [(d.field, d.reason) for d in letters] == [("values[3][2]", "values[3][2]: must be a number, got str")]
    print(f"{len(blocks)} blocks of 25 samples and {len(singles)} single readings -> {len(predictions)} windows, "
          f"accuracy {accuracy:.3f}")
