import math

import orjson
import pytest

from schemas import DeadLetter, Label, ModelSnapshot, Prediction, ReviewRequest, SchemaError, SensorReading

CHANNELS = ["ax", "ay", "az"]


def reading(**over):
    base = {"schema_version": 1, "device_id": "dev-1", "ts": 1000, "values": [1, 2.5, -3], "seq": 4}
    base.update(over)
    return orjson.dumps(base)


def test_reading_round_trip_list_and_map():
    r = SensorReading.decode(reading(label="walking"), channel_names=CHANNELS)
    assert (r.device_id, r.ts, r.values, r.seq, r.label) == ("dev-1", 1000, [1.0, 2.5, -3.0], 4, "walking")
    assert SensorReading.decode(r.encode(), channel_names=CHANNELS) == r
    m = SensorReading.decode(reading(values={"az": 3, "ax": 1, "ay": 2}), channel_names=CHANNELS)
    assert m.values == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("raw, field", [
    (b"{not json", "$"),
    (b"[1, 2]", "$"),
    (b'{"device_id": "d", "ts": 1, "values": [1, NaN, 2]}', "values[1]"),  # named, though not strict JSON
    (b'{"device_id": "d", "ts": 1, "values": [1, 2, -Infinity]}', "values[2]"),
    (b'{"device_id": "d", "ts": 1, "values": [1, 2, Nope]}', "$"),
    (reading(ts="soon"), "ts"),
    (reading(ts=-5), "ts"),
    (reading(ts=True), "ts"),
    (reading(device_id=""), "device_id"),
    (reading(device_id="a\x1fb"), "device_id"),
    (reading(values=[1, 2]), "values"),
    (reading(values=[1, "2", 3]), "values[1]"),
    (reading(values=[1, 1e400, 3]), "values[1]"),
    (reading(values="1,2,3"), "values"),
    (reading(values={"ax": 1, "ay": 2}), "values.az"),
    (reading(values={"ax": 1, "ay": 2, "az": 3, "bx": 4}), "values.bx"),
    (reading(colour="red"), "colour"),
    (reading(schema_version=7), "schema_version"),
    (orjson.dumps({"device_id": "d", "values": [1, 2, 3]}), "ts"),
])
def test_bad_readings_name_the_field(raw, field):
    with pytest.raises(SchemaError) as err:
        SensorReading.decode(raw, channel_names=CHANNELS)
    assert err.value.field == field


def test_oversize_message_refused_before_parsing():
    raw = reading(label="x" * 200)
    with pytest.raises(SchemaError, match="exceeds the limit"):
        SensorReading.decode(raw, channel_names=CHANNELS, max_bytes=100)


def test_infinity_refused_as_literal_and_as_value():
    with pytest.raises(SchemaError, match="infinity"):
        SensorReading.decode(b'{"device_id": "d", "ts": 1, "values": [1, 1e400, 2]}', channel_names=CHANNELS)
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(SchemaError, match="finite") as err:
            SensorReading.from_dict({"device_id": "d", "ts": 1, "values": [1.0, bad, 2.0]}, channel_names=CHANNELS)
        assert err.value.field == "values[1]"


def test_prediction_and_review_round_trip():
    p = Prediction("d", 10, 1, "walking", 0.7, {"walking": 0.7, "running": 0.3}, "m", 2, 12.5, 11, "walking")
    assert Prediction.decode(p.encode()) == p
    r = ReviewRequest("d:10", "d", 1, 10, ["a", "b"], [[1.0, 2.0], [3.0, 4.0]], "walking", 0.4,
                      {"walking": 0.4, "running": 0.6}, 1, "low_confidence", 5)
    assert ReviewRequest.decode(r.encode()) == r
    bad = orjson.loads(r.encode())
    bad["values"][1] = [1.0]
    with pytest.raises(SchemaError, match=r"values\[1\]"):
        ReviewRequest.from_dict(bad)


def test_label_checks_class_and_status():
    ok = Label("d:1", "walking", "alice", 5)
    assert Label.decode(ok.encode(), classes=["walking"]) == ok
    with pytest.raises(SchemaError, match="unknown class"):
        Label.decode(Label("d:1", "flying", "alice", 5).encode(), classes=["walking"])
    assert Label.decode(Label("d:1", "-", "alice", 5, "skipped").encode(), classes=["walking"]).status == "skipped"
    with pytest.raises(SchemaError) as err:
        Label.from_dict({"review_id": "x", "label": "a", "labeler": "b", "answered_at": 1, "status": "maybe"})
    assert err.value.field == "status"


def test_snapshot_requires_hex_sha():
    s = ModelSnapshot("m", 3, "file:///tmp/x.onnx", "a" * 64, {"accuracy": 0.9}, 2, 10)
    assert ModelSnapshot.decode(s.encode()) == s
    with pytest.raises(SchemaError) as err:
        ModelSnapshot.from_dict({**orjson.loads(s.encode()), "sha256": "nothex"})
    assert err.value.field == "sha256"


def test_dead_letter_round_trip():
    d = DeadLetter("sensor-readings", 2, 17, "ts: must be an integer", "{...}", "ts", "parse", 9)
    assert DeadLetter.decode(d.encode()) == d


def test_drift_event_round_trip_and_signal_check():
    from schemas import DriftEvent

    e = DriftEvent("m", "error", 5, 2, 600, 120, 0.4)
    assert DriftEvent.decode(e.encode()) == e
    with pytest.raises(SchemaError) as err:
        DriftEvent.from_dict({**orjson.loads(e.encode()), "signal": "vibes"})
    assert err.value.field == "signal"
