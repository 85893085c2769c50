"""Several models in one pair of jobs: which model a reading goes to, the configuration that says so,
and the label join, review queue and window state that keep each model's records apart."""

from __future__ import annotations

import pickle

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from operators.label_join import JoinTarget, LabelJoiner
from operators.model_routing import DeviceRouter, served_models
from operators.parse import ReadingParser, RoutedParser
from operators.review_queue import ReviewError, ReviewQueue
from operators.windowing import SlidingWindower
from schemas import DeadLetter, Label, ReviewRequest, SchemaError, SensorReading
from settings import ConfigError, load_config

GAIT = """
[models.gait]
channels = ["ax", "ay", "az"]
sample_rate_hz = 50
window = 16
stride = 4
classes = ["walk", "freeze"]
device_types = ["knee", "ankle"]
"""
HAR = """
[models.har]
channels = ["x"]
sample_rate_hz = 10
window = 8
stride = 8
classes = ["sit", "stand", "lie"]
devices = ["wrist-*"]
"""


def config(tmp_path, text: str):
    path = tmp_path / "sensorloop.toml"
    path.write_text(f'[registry]\npath = "{tmp_path / "registry"}"\nmodel_name = "gait"\n' + text)
    return load_config(path, env={})


def request(review_id: str, model: str | None, width: int = 1, rows: int = 2) -> ReviewRequest:
    return ReviewRequest(review_id, "d", 0, 1, ["c"] * width, [[0.0] * width] * rows, "x", 0.4, {}, 1, "audit", 0,
                         model_name=model)


def test_served_models_follow_the_configuration_with_their_own_window_and_stride(tmp_path):
    cfg = config(tmp_path, '[serving]\nmodels = "gait, har"\n' + GAIT + HAR)
    assert cfg.served_models == ["gait", "har"]
    served = {m.name: m for m in served_models(cfg)}  # no versions yet: the declarations (a cold start)
    assert (served["gait"].window, served["gait"].stride, served["gait"].channels) == (16, 4, ("ax", "ay", "az"))
    assert (served["har"].window, served["har"].stride, served["har"].channels) == (8, 8, ("x",))
    router = DeviceRouter.for_config(cfg)
    assert router.route("k1", "knee") == router.route("k2", "ankle") == "gait"
    assert router.route("wrist-3", None) == "har"
    with pytest.raises(SchemaError, match="device_type: no served model takes device type 'gait'"):
        router.route("k1", "gait")  # gait declared its types: its name is not one of them


def test_the_configuration_refuses_a_device_type_two_models_claim_and_a_model_listed_twice(tmp_path):
    with pytest.raises(ConfigError) as err:
        config(tmp_path, '[serving]\nmodels = "gait, har, gait"\n' + GAIT + HAR.replace('devices = ["wrist-*"]',
                                                                                       'device_types = ["knee"]'))
    text = str(err.value)
    assert "serving.models: gait listed twice" in text
    assert "models.har.device_types: 'knee' is already gait's device type" in text


def test_a_served_model_with_neither_a_version_nor_a_declaration_cannot_start(tmp_path):
    cfg = config(tmp_path, '[serving]\nmodels = "gait, other"\n' + GAIT)
    with pytest.raises(ValueError, match="other: no version of model 'other'"):
        served_models(cfg)


def routed_parser() -> RoutedParser:
    parsers = {"gait": ReadingParser(["ax", "ay", "az"], "r", model_name="gait"),
               "har": ReadingParser(["x"], "r", model_name="har")}
    return RoutedParser(parsers, DeviceRouter({"knee": "gait", "har": "har"}, [("wrist-*", "har")]))


readings = st.fixed_dictionaries(
    {"device_id": st.sampled_from(["wrist-1", "knee-1", "lamp"]), "ts": st.integers(0, 10**12),
     "values": st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=4)},
    optional={"device_type": st.sampled_from(["knee", "har", "thermostat", ""])})


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(readings)
def test_any_reading_goes_to_the_model_its_type_or_id_names_or_is_refused_with_the_reason(reading):
    raw = orjson.dumps(reading)
    out = routed_parser().parse(raw, 0, 7)
    kind = reading.get("device_type")
    expected = ({"knee": "gait", "har": "har"}.get(kind) if kind is not None
                else "har" if reading["device_id"].startswith("wrist-") else None)
    if isinstance(out, DeadLetter):
        assert out.offset == 7 and out.raw == raw.decode()
        if expected is None:
            assert out.field == "device_type" and out.model_name is None, out
        else:  # the right model, the wrong number of channels for it
            assert out.model_name == expected and out.field == "values", out
            assert len(reading["values"]) != {"gait": 3, "har": 1}[expected]
        return
    model, parsed = out
    assert model == expected and isinstance(parsed, SensorReading)
    assert len(parsed.values) == {"gait": 3, "har": 1}[model]


def test_answers_are_joined_against_the_classes_of_the_model_that_asked():
    joiner = LabelJoiner(["walk", "freeze"], shape=(2, 3), name="gait",
                         others={"har": JoinTarget(("sit", "stand"), (2, 1))})
    state = joiner.new_state()
    assert joiner.on_label(state, Label("h:1", "sit", "ann", 1), 1) == ([], [])  # waits for its request
    done, refused = joiner.on_request(state, request("h:1", "har"), 2)
    assert [(d.label, d.model_name) for d in done] == [("sit", "har")] and refused == []
    state = joiner.new_state()
    joiner.on_label(state, Label("h:2", "walk", "ann", 1), 1)  # a class of the other model
    done, refused = joiner.on_request(state, request("h:2", "har"), 2)
    assert done == [] and "unknown class 'walk' for model har" in refused[0].reason
    assert refused[0].label.model_name == "har"
    _, refused = joiner.on_label(state, Label("h:2", "walk", "bob", 3), 3)
    assert "unknown class 'walk' for model har; known: ['sit', 'stand']" in refused[0].reason
    with pytest.raises(SchemaError, match="values: a window of 2x3 values; the model takes 2x1"):
        joiner.on_request(joiner.new_state(), request("h:3", "har", width=3), 4)
    with pytest.raises(SchemaError, match="model_name: no model 'toaster' learns here"):
        joiner.on_request(joiner.new_state(), request("h:4", "toaster"), 4)
    done, _ = joiner.on_request(state := joiner.new_state(), request("g:1", None, width=3), 5)
    assert joiner.on_label(state, Label("g:1", "freeze", "ann", 6), 6)[0][0].model_name == ""  # the default model


def test_the_review_queue_offers_and_checks_the_classes_of_each_request_s_model():
    queue = ReviewQueue(["walk", "freeze"], model_classes={"har": ["sit", "stand"]})
    queue.add(request("h:1", "har"), 0, 0)
    req = queue.lease("ann", now=0)
    assert queue.classes_for(req) == ["sit", "stand"] and set(queue.all_classes) == {"walk", "freeze", "sit", "stand"}
    with pytest.raises(ReviewError, match="unknown class 'walk'"):
        queue.answer("h:1", "ann", "walk", now=1)
    label = queue.answer("h:1", "ann", "sit", now=1)
    assert label.model_name == "har" and Label.decode(label.encode()).model_name == "har"


def test_a_device_s_window_state_remembers_its_model_and_its_windows_name_it():
    windower = SlidingWindower(2, 1, 1)
    state = pickle.loads(pickle.dumps(windower.new_state("har")))
    windows, _ = windower.add(state, SensorReading("d", 1, [1.0]), 1)
    windows, _ = windower.add(state, SensorReading("d", 2, [2.0]), 2)
    assert state.model_name == "har" and [w.model_name for w in windows] == ["har"]
    copy = pickle.loads(pickle.dumps(windows[0]))
    assert copy.model_name == "har" and np.array_equal(copy.values, windows[0].values)


def test_config_check_names_what_each_served_model_takes_and_refuses_one_that_cannot_start(tmp_path, capsys):
    from control.cli import main

    path = tmp_path / "sensorloop.toml"
    path.write_text(f'[registry]\npath = "{tmp_path / "registry"}"\nmodel_name = "gait"\n'
                    '[serving]\nmodels = "gait, har"\n' + GAIT + HAR)
    assert main(["--config", str(path), "config", "check"]) == 0
    out = capsys.readouterr().out
    assert "serves gait: 3 channel(s), window 16, stride 4; device_type knee, ankle" in out
    assert "serves har: 1 channel(s), window 8, stride 8; device_type har, devices wrist-*" in out
    path.write_text(path.read_text().replace('models = "gait, har"', 'models = "gait, har, toaster"'))
    assert main(["--config", str(path), "config", "check"]) == 1
    assert "toaster: no version of model 'toaster'" in capsys.readouterr().err
