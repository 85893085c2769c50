"""Heads per task on one encoder: the anomaly score and the forecast, in torch and in the exported graph,
in configuration, in serving's scorer and in the online learner."""

from __future__ import annotations

import copy
import io

import numpy as np
import orjson
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from model.export import export_onnx
from model.network import FLATNESS_BUFFERS, WindowTransformer, rarity
from model.online import OnlineTrainer
from model.registry import ArtifactError
from model.runtime import OnnxRunner
from model.self_supervised import windows_with_future
from model.spec import ModelSpec
from model.train import fit, load_network
from operators.inference import WindowScorer
from operators.routing import ReviewRouter
from operators.serving_model import ServingModel, smoke_test
from operators.windowing import Window
from schemas import Forecast, Prediction, ReviewRequest, SchemaError
from settings import LearningSettings
from settings.models import ModelDeclaration
from tests.unit.test_properties import BOUNDED, json_values

WINDOW, HORIZON = 24, 4
SPEC = ModelSpec(window=WINDOW, channels=("a", "b"), classes=("slow", "fast"), tasks=("classify", "anomaly", "forecast"),
                 horizon=HORIZON, d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0)


def waves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-channel sine waves, slow or fast, random phase and small noise: windows, classes, next samples."""
    rng = np.random.default_rng(seed)
    X, y, F = [], [], []
    for i in range(n):
        fast = i % 2
        t = np.arange(WINDOW + HORIZON) * (0.5 if fast else 0.2) + rng.uniform(0, 6.28)
        series = np.stack([np.sin(t), 0.5 * np.cos(t)], axis=1) + rng.normal(0, 0.05, (len(t), 2))
        X.append(series[:WINDOW])
        F.append(series[WINDOW:])
        y.append(fast)
    return np.asarray(X, np.float32), np.asarray(y), np.asarray(F, np.float32)


@pytest.fixture(scope="module")
def trained() -> WindowTransformer:
    X, y, F = waves(400, seed=0)
    torch.manual_seed(0)
    net = WindowTransformer(SPEC)
    net.set_normalisation(X)
    fit(net, X, y, epochs=25, future=F, seed=0)
    net.fit_anomaly_scale(waves(300, seed=1)[0])
    return net.eval()


def spikes(X: np.ndarray, height: float = 3.0) -> np.ndarray:
    out = X.copy()
    out[:, ::5, 0] += height
    return out


def test_the_anomaly_score_is_rare_on_normal_windows_and_high_on_faults(trained):
    X, _, _ = waves(300, seed=2)
    with torch.no_grad():
        normal = trained.anomaly_score(torch.as_tensor(X)).numpy()
        faulty = trained.anomaly_score(torch.as_tensor(spikes(X))).numpy()
        stuck = X.copy()
        stuck[:, :, 1] = stuck[:, :1, 1]
        stuck_scores = trained.anomaly_score(torch.as_tensor(stuck)).numpy()
    # the score says how rare a window is among normal ones: about 10 % of them reach 1, about 1 % reach 2
    assert 0.03 < (normal >= 1).mean() < 0.25
    assert (normal >= 2).mean() < 0.05
    assert (faulty >= 2).mean() > 0.9 and np.median(faulty) > 2.5
    assert np.median(stuck_scores) > np.percentile(normal, 95)


def test_the_forecast_beats_the_last_value(trained):
    X, _, F = waves(200, seed=3)
    with torch.no_grad():
        predicted = trained.forecast(torch.as_tensor(X)).numpy()
    assert predicted.shape == (200, HORIZON, 2)
    assert np.abs(predicted - F).mean() < 0.5 * np.abs(X[:, -1:, :] - F).mean()


@pytest.mark.parametrize("channel", [0, 1])
def test_a_channel_stuck_at_a_plausible_value_is_flagged_by_the_flatness_part(trained, channel):
    X, _, _ = waves(300, seed=2)
    stuck = X.copy()
    stuck[:, :, channel] = stuck[:, :1, channel]  # each window's channel frozen at its first, ordinary, value
    without = copy.deepcopy(trained)
    without.flat_tails.zero_()  # the score as it was before the flatness part
    with torch.no_grad():
        normal, faulty = (trained.anomaly_score(torch.as_tensor(a)).numpy() for a in (X, stuck))
        faulty_without = without.anomaly_score(torch.as_tensor(stuck)).numpy()
    assert trained.flatness_fitted and not without.flatness_fitted
    assert (faulty >= 3).mean() > 0.95
    assert (faulty_without >= 3).mean() < 0.5  # a flat line is easy to rebuild: the reconstruction misses it
    # the joint score keeps its meaning on normal windows: about 10 % reach 1, almost none 3
    assert 0.03 < (normal >= 1).mean() < 0.25 and (normal >= 3).mean() < 0.01


def test_weights_saved_before_the_flatness_part_load_without_it(trained):
    state = {k: v for k, v in trained.state_dict().items() if k not in FLATNESS_BUFFERS}
    buf = io.BytesIO()
    torch.save(state, buf)
    older = load_network(SPEC, buf.getvalue())
    assert not older.flatness_fitted
    X = torch.as_tensor(waves(20, seed=5)[0])
    with torch.no_grad():
        main_only = rarity(trained.anomaly_statistic(X), trained.statistic_tail)
        assert torch.allclose(older.anomaly_score(X), main_only)
    del state["tail_grid"]
    buf = io.BytesIO()
    torch.save(state, buf)
    with pytest.raises(RuntimeError, match="tail_grid"):
        load_network(SPEC, buf.getvalue())


def test_the_exported_graph_gives_every_head_as_torch_does(trained):
    runner = OnnxRunner(export_onnx(trained, SPEC, temperature=1.5))
    assert runner.output_names == ["probabilities", "anomaly", "forecast"]
    X, _, _ = waves(37, seed=4)
    out = runner.predict(X)
    with torch.no_grad():
        x = torch.as_tensor(X)
        probs = torch.softmax(trained(x) / 1.5, -1).numpy()
        score, forecast = trained.anomaly_score(x).numpy(), trained.forecast(x).numpy()
    assert np.abs(out["probabilities"] - probs).max() < 1e-5
    assert np.abs(out["anomaly"] - score).max() < 1e-3
    assert np.abs(out["forecast"] - forecast).max() < 1e-4
    smoke_test(runner, SPEC)


def test_a_graph_without_a_head_of_its_tasks_is_refused(trained):
    classify_only = OnnxRunner(export_onnx(trained, ModelSpec(window=WINDOW, channels=("a", "b"), classes=("slow", "fast"))))
    with pytest.raises(ArtifactError, match="lacks the output"):
        smoke_test(classify_only, SPEC)
    with pytest.raises(ArtifactError, match="lacks the output"):
        smoke_test(classify_only, ModelSpec(window=WINDOW, channels=("a", "b"), classes=(), tasks=("anomaly",)))
    with pytest.raises(ArtifactError, match="needs a classify or an anomaly head"):
        smoke_test(classify_only, ModelSpec(window=WINDOW, channels=("a", "b"), classes=(), tasks=("forecast",),
                                            horizon=2))


def test_an_anomaly_only_model_trains_without_labels():
    spec = ModelSpec(window=WINDOW, channels=("a", "b"), classes=(), tasks=("anomaly",), d_model=16, n_heads=2,
                     n_layers=1, d_ff=32)
    X, _, _ = waves(200, seed=5)
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    losses = fit(net, X, None, epochs=10)
    assert losses[-1] < losses[0]
    net.fit_anomaly_scale(X)
    with pytest.raises(ValueError, match="no classify head"):
        net(torch.as_tensor(X))
    runner = OnnxRunner(export_onnx(net, spec))
    assert runner.output_names == ["anomaly"] and runner.predict(X[:3])["anomaly"].shape == (3,)


def window(device: str, end: int, values: np.ndarray) -> Window:
    return Window(device, end - 2300, end, values, None, end)


def test_serving_scores_flags_and_forecasts(trained):
    model = ServingModel("waves", 2, SPEC, OnnxRunner(export_onnx(trained, SPEC)))
    router = ReviewRouter(threshold=0.0, audit_rate=0.0, budget_per_minute=100)
    scorer = WindowScorer(model, router, anomaly_threshold=3.0)
    X, _, _ = waves(6, seed=6)
    batch = [window(f"d{i}", 10_000, X[i]) for i in range(3)] + [window("broken", 10_000, spikes(X[3:4])[0])]
    predictions, reviews, forecasts, unscored = scorer.score_all(batch, now_ms=10_000, clock=lambda: 10_001)
    assert not unscored and len(predictions) == len(forecasts) == 4
    assert all(p.anomaly is not None for p in predictions)
    assert [r.device_id for r in reviews] == ["broken"] and reviews[0].reason == "anomaly"
    assert reviews[0].anomaly >= 3.0 and ReviewRequest.decode(reviews[0].encode()).anomaly == reviews[0].anomaly
    f = Forecast.decode(forecasts[0].encode())
    assert (f.device_id, f.window_end, f.interval_ms, len(f.values), len(f.values[0])) == ("d0", 10_000, 100.0,
                                                                                        HORIZON, 2)
    assert Prediction.decode(predictions[3].encode()).anomaly == predictions[3].anomaly


def test_a_device_baseline_puts_each_devices_scores_on_its_own_scale(trained):
    """A device whose sensor sits 0.5 off scores ~3 on every ordinary window under the model's scale, so it is
    asked about all the time; on its own scale (``anomaly_device_windows``) only its spikes are, and a
    steady device is asked about as before."""
    from operators.device_baseline import DeviceScoreBaseline

    model = ServingModel("waves", 2, SPEC, OnnxRunner(export_onnx(trained, SPEC)))
    X = waves(160, seed=9)[0]
    devices = {"steady": X, "offset": X + 0.5}

    def flagged(baseline) -> dict[str, tuple[float, float]]:
        scorer = WindowScorer(model, ReviewRouter(threshold=0.0, audit_rate=0.0, budget_per_minute=10_000),
                              anomaly_threshold=3.0, device_baseline=baseline)
        shares = {}
        for device, values in devices.items():
            reference = [window(device, 1000 * (i + 1), v) for i, v in enumerate(values[:60])]
            scorer.score_all(reference, 0)
            ordinary = [window(device, 100_000 + 1000 * i, v) for i, v in enumerate(values[60:])]
            spiked = [window(device, 300_000 + 1000 * i, v) for i, v in enumerate(spikes(values[60:], 6.0))]
            shares[device] = tuple(float(np.mean([p.anomaly >= 3.0 for p in scorer.score_all(part, 0)[0]]))
                                   for part in (ordinary, spiked))
        return shares

    model_scale, own_scale = flagged(None), flagged(DeviceScoreBaseline(windows=60))
    assert model_scale["offset"][0] > 0.4  # ordinary windows of the offset device look abnormal to the model
    assert own_scale["offset"][0] < 0.1 and own_scale["offset"][1] > 0.9  # on its own scale only spikes do
    assert own_scale["steady"][0] < 0.1 and own_scale["steady"][1] > 0.9
    with pytest.raises(ValueError, match="at least 10"):
        DeviceScoreBaseline(windows=3)


def test_a_non_finite_anomaly_score_leaves_the_window_unscored():
    class Broken:
        provider = "test"

        def predict(self, windows):
            n = len(windows)
            return {"probabilities": np.tile([0.9, 0.1], (n, 1)), "anomaly": np.array([np.nan] + [0.1] * (n - 1)),
                    "forecast": np.zeros((n, HORIZON, 2))}

    scorer = WindowScorer(ServingModel("waves", 1, SPEC, Broken()), ReviewRouter(0.5, 0.0, 10))
    X, _, _ = waves(2, seed=7)
    predictions, _, forecasts, unscored = scorer.score_all([window("a", 5000, X[0]), window("b", 5000, X[1])], 5000)
    assert [w.device_id for w in unscored] == ["a"] and [p.device_id for p in predictions] == ["b"]
    assert [f.device_id for f in forecasts] == ["b"]


def test_the_online_learner_keeps_training_the_reconstruction(trained):
    import copy

    net = copy.deepcopy(trained)
    before = net.decoder.weight.detach().clone()
    trainer = OnlineTrainer(net, 2, LearningSettings(batch_size=8))
    X, y, _ = waves(8, seed=8)
    for w, label in zip(X, y):
        trainer.learn_one(w, int(label))
    assert trainer.updates == 1 and not torch.equal(before, net.decoder.weight)


def test_learning_unlabeled_windows_holds_the_classes_where_the_labels_left_them(trained):
    """Self-supervised steps move the shared encoder; ``unlabeled_anchor`` holds the class outputs to those of
    the network as the last labels left it, and a labeled update moves that anchor."""
    import copy

    X, y, _ = waves(200, seed=5)
    unlabeled = waves(320, seed=6)[0]

    def class_probs(net):
        with torch.no_grad():
            return torch.softmax(net.eval()(torch.as_tensor(X)), -1).numpy()

    before = class_probs(trained)
    moved = {}
    for anchor in (0.0, 1.0):
        torch.manual_seed(0)
        trainer = OnlineTrainer(copy.deepcopy(trained), 2, LearningSettings(batch_size=8, unlabeled_anchor=anchor))
        for w in unlabeled:
            trainer.learn_unlabeled(w)
        moved[anchor] = float(np.abs(class_probs(trainer.net) - before).sum(1).mean())
        assert (trainer.class_anchor is not None) == (anchor > 0)
        for w, label in zip(X[:8], y[:8]):
            trainer.learn_one(w, int(label))
        assert trainer.class_anchor is None
    assert moved[0.0] > 0.05  # the encoder really moved
    assert moved[1.0] < 0.75 * moved[0.0]


def test_declared_tasks_and_horizon_reach_the_spec():
    declared = ModelDeclaration.from_table("fog", {"channels": ["ax", "ay"], "sample_rate_hz": 64, "window": "1s",
                                                   "stride": 16, "tasks": ["anomaly", "forecast"],
                                                   "forecast_horizon": "250ms"})
    spec = ModelSpec.from_dict(declared.spec_dict())
    assert (spec.tasks, spec.horizon, spec.classes, spec.window) == (("anomaly", "forecast"), 16, (), 64)
    assert ModelDeclaration.from_table("fog", declared.to_table()) == declared
    with pytest.raises(ValueError, match="classes: missing"):
        ModelDeclaration.from_table("m", {"channels": ["a"], "sample_rate_hz": 1, "window": 4, "stride": 1,
                                          "tasks": ["classify", "anomaly"]})
    with pytest.raises(ValueError, match="tasks: a model needs at least one"):
        ModelDeclaration.from_table("m", {"channels": ["a"], "sample_rate_hz": 1, "window": 4, "stride": 1, "tasks": []})


def test_windows_with_future_never_reach_past_the_series():
    X, F = windows_with_future(np.arange(30, dtype=np.float32).reshape(15, 2), window=4, horizon=3, stride=2)
    assert X.shape == (5, 4, 2) and F.shape == (5, 3, 2) and F[-1, -1, 1] == 29


@BOUNDED
@given(obj=json_values | st.fixed_dictionaries(
    {"device_id": st.sampled_from(["d", ""]), "window_end": st.integers(-2, 2**40), "interval_ms": st.floats(),
     "channels": st.lists(st.text(max_size=3), max_size=3), "values": st.lists(st.lists(st.floats(), max_size=3),
                                                                              max_size=3),
     "model_name": st.sampled_from(["m", "?"]), "model_version": st.integers(-1, 3), "emitted_at": st.integers(0, 9)}))
def test_any_forecast_record_decodes_or_is_refused_by_name(obj):
    try:
        raw = orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        f = Forecast.decode(raw)
    except SchemaError as exc:
        assert exc.args
    else:
        assert all(len(row) == len(f.channels) for row in f.values) and np.isfinite(f.values).all()


def test_versions_the_learning_loop_publishes_keep_a_calibrated_anomaly_score(tmp_path):
    from model.datasets import load_basic_motions, sliding_windows
    from model.registry import ModelRegistry
    from model.train import encode_labels, publish_version
    from operators.label_join import LabeledWindow
    from operators.learning import VersionPublisher, loop_from_registry
    from operators.serving_model import load_from_registry
    from schemas import Topics

    spec = ModelSpec(window=32, tasks=("classify", "anomaly"), d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0)
    X, labels = sliding_windows(load_basic_motions("train"), 32, 8)
    Xte, labels_te = sliding_windows(load_basic_motions("test"), 32, 8)
    torch.manual_seed(0)
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    fit(net, X, encode_labels(labels, spec.classes), epochs=10, seed=0)
    registry = ModelRegistry(str(tmp_path / "registry"))
    publish_version(registry, "m", net, spec, {}, normal_windows=Xte[::2])
    loop = loop_from_registry(registry, "m", LearningSettings(gate_every=32, min_holdout=16))
    publisher = VersionPublisher(registry, "m", Topics())
    order = np.random.default_rng(0).permutation(len(X))
    for i in np.concatenate([order, order]):
        publisher.learn(loop, LabeledWindow(f"d:{i}", "d", X[i], str(labels[i]), str(labels[i]), loop.version,
                                            ["ann"], int(i)), int(i))
    newest = registry.latest_version("m")
    assert newest > 1, "the loop published no version"
    assert "anomaly_reconstruction_center" in registry.metadata("m", newest).metrics  # refitted on its reservoir
    served = load_from_registry(registry.root, "m")
    normal = served.runner.predict(Xte)["anomaly"]
    broken = Xte.copy()
    broken[:, ::4, 0] += 10 * X[:, :, 0].std()
    faulty = served.runner.predict(broken)["anomaly"]
    assert (normal >= 3).mean() < 0.1 and np.median(faulty) > np.percentile(normal, 90)


def basic_motions_samples(split: str, window: int = 32, horizon: int = 8, stride: int = 4):
    """BasicMotions recordings as the unlabeled windows serving would pass on, each with its next samples."""
    from model.datasets import load_basic_motions
    from schemas import WindowSample

    out = []
    for r, series in enumerate(load_basic_motions(split).series):
        X, F = windows_with_future(series, window, horizon, stride)
        for k, (x, f) in enumerate(zip(X, F)):
            end = 1_000_000 * r + 100 * (k * stride + window - 1)
            out.append(WindowSample(f"dev-{r}", end - 100 * (window - 1), end, [f"c{i}" for i in range(6)],
                                    x.tolist(), "fog", 0, f.tolist()))
    return out


def test_an_anomaly_model_learns_from_unlabeled_windows_alone_from_cold_start(tmp_path):
    import pickle

    from model.registry import ModelRegistry
    from operators.learning import LearningLoop, VersionPublisher
    from operators.learning_state import AcceptedVersion, LoopJournal
    from operators.serving_model import load_from_registry
    from schemas import Topics

    spec = ModelSpec(window=32, classes=(), tasks=("anomaly", "forecast"), horizon=8, d_model=32, n_heads=4,
                     n_layers=1, d_ff=64, dropout=0.0)
    registry = ModelRegistry(str(tmp_path / "registry"))
    loop = LearningLoop(None, spec, 0, LearningSettings(batch_size=16, gate_every=64, min_holdout=30))
    at_start = pickle.dumps(loop)
    publisher = VersionPublisher(registry, "fog", Topics())
    samples = basic_motions_samples("train")
    order = np.random.default_rng(0).permutation(len(samples))
    journal, accepted = [], []
    for i in np.concatenate([order, order]):
        learned = publisher.learn(loop, samples[i], 0)
        journal.append(samples[i])
        if learned.accepted is not None:
            accepted.append(learned.accepted[0])
            journal.append(AcceptedVersion(*learned.accepted))
    assert accepted, "no version from unlabeled windows"
    meta = registry.metadata("fog", accepted[0])
    assert meta.metrics["holdout_error"] < meta.metrics["serving_holdout_error"]  # beat the trivial model
    newest = registry.metadata("fog", accepted[-1])
    assert "anomaly_reconstruction_center" in newest.metrics and newest.metrics["unlabeled_windows"] > 500
    served = load_from_registry(registry.root, "fog")  # serving loads it as it would: ONNX, smoke-tested
    assert set(served.runner.predict(np.zeros((2, 32, 6), np.float32))) == {"anomaly", "forecast"}
    assert len(registry.metadata("fog", accepted[-1]).spec["extra"]["normal_range"]) == 6
    restored = LoopJournal().restore(None, journal, lambda: pickle.loads(at_start))
    assert restored.version == loop.version == accepted[-1] and restored.unlabeled_seen == loop.unlabeled_seen
    X = np.stack([np.asarray(s.values, np.float32) for s in basic_motions_samples("test")[:16]])
    with torch.inference_mode():
        assert torch.allclose(restored.trainer.net.anomaly_score(torch.as_tensor(X)),
                              loop.trainer.net.anomaly_score(torch.as_tensor(X)), atol=1e-4)


def test_a_model_without_a_classify_head_serves_scores_and_asks_about_anomalies():
    spec = ModelSpec(window=WINDOW, channels=("a", "b"), classes=(), tasks=("anomaly",), d_model=16, n_heads=2,
                     n_layers=1, d_ff=32, extra={"normal_range": [[-1.0, 1.0], [-0.5, 0.5]]})
    X, _, _ = waves(300, seed=9)
    torch.manual_seed(0)
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    fit(net, X, None, epochs=15)
    net.fit_anomaly_scale(waves(200, seed=10)[0])
    model = ServingModel("waves", 3, spec, OnnxRunner(export_onnx(net, spec)))
    smoke_test(model.runner, spec)
    scorer = WindowScorer(model, ReviewRouter(threshold=0.6, audit_rate=0.0, budget_per_minute=100))
    fresh = waves(4, seed=11)[0]
    batch = [window(f"d{i}", 7_000, fresh[i]) for i in range(3)] + [window("broken", 7_000, spikes(fresh[3:])[0])]
    predictions, reviews, forecasts, unscored = scorer.score_all(batch, now_ms=7_000)
    assert len(predictions) == 4 and not forecasts and not unscored
    decoded = [Prediction.decode(p.encode()) for p in predictions]
    assert all(p.label is None and p.probabilities is None and p.anomaly is not None for p in decoded)
    assert [(r.device_id, r.reason) for r in reviews] == [("broken", "anomaly")]
    request = ReviewRequest.decode(reviews[0].encode())
    assert request.predicted is None and request.typical_range == [[-1.0, 1.0], [-0.5, 0.5]]


def test_anomaly_verdicts_are_joined_and_refused_where_no_anomaly_was_asked_about():
    from operators.label_join import LabelJoiner
    from schemas import Label

    joiner = LabelJoiner(["slow", "fast"], ttl_ms=60_000, answers_needed=2, shape=(2, 1))
    asked = ReviewRequest("d:1", "d", 0, 1, ["x"], [[0.5], [0.7]], "slow", 0.9, {"slow": 0.9, "fast": 0.1}, 1,
                          "anomaly", 0, anomaly=4.2)
    state = joiner.new_state()
    joiner.on_request(state, asked, 0)
    assert joiner.on_label(state, Label("d:1", "", "ann", 5, verdict="normal"), 5) == ([], [])
    done, refused = joiner.on_label(state, Label("d:1", "fast", "bob", 6, verdict="normal"), 6)
    assert not refused and (done[0].verdict, done[0].label) == ("normal", "fast")
    plain = ReviewRequest("d:2", "d", 0, 1, ["x"], [[0.5], [0.7]], "slow", 0.4, {"slow": 0.4, "fast": 0.6}, 1,
                          "low_confidence", 0)
    state = joiner.new_state()
    joiner.on_request(state, plain, 0)
    done, refused = joiner.on_label(state, Label("d:2", "", "ann", 5, verdict="abnormal"), 5)
    assert not done and "asked no anomaly question" in refused[0].reason


def test_a_pattern_confirmed_normal_stops_scoring_high_and_other_faults_still_do(trained):
    import copy

    net = copy.deepcopy(trained)
    X, _, _ = waves(300, seed=12)
    flagged = spikes(X)
    stuck = X.copy()
    stuck[:, :, 1] = 2.0  # a channel stuck far outside its range
    score = lambda A: net.anomaly_score(torch.as_tensor(A)).detach().numpy()  # noqa: E731
    before = score(flagged[100:])
    assert np.median(before) > 2.5
    net.fit_anomaly_scale(waves(300, seed=1)[0], confirmed=flagged[:30])  # people answered "normal" on 30 of them
    after, normal, other = score(flagged[100:]), score(waves(200, seed=13)[0]), score(stuck)
    assert np.median(after) < 1.5 < np.median(before) - 1.0
    assert (normal >= 2).mean() < 0.05 and np.median(other) > 2.5
    runner = OnnxRunner(export_onnx(net, SPEC))  # the exported graph gives the same scores
    assert np.abs(runner.predict(flagged[100:120])["anomaly"] - after[:20]).max() < 1e-3


@BOUNDED
@given(obj=json_values | st.fixed_dictionaries(
    {"device_id": st.sampled_from(["d", ""]), "window_start": st.integers(-2, 9), "window_end": st.integers(-2, 9),
     "channels": st.lists(st.sampled_from(["x", "y"]), max_size=3),
     "values": st.lists(st.lists(st.floats() | st.integers(-2**70, 2**70) | st.text(max_size=2), max_size=3), max_size=4),
     "model_name": st.sampled_from(["m", "?"]), "model_version": st.integers(-1, 3)},
    optional={"future": st.lists(st.lists(st.floats(), max_size=3), max_size=3), "verdict": st.text(max_size=3)}))
def test_any_unlabeled_window_decodes_to_its_shape_or_is_refused_by_name(obj):
    from schemas import WindowSample

    try:
        raw = orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        sample = WindowSample.decode(raw, shape=(2, 1), horizon=1)
    except SchemaError as exc:
        assert exc.args
    else:
        assert np.asarray(sample.values).shape == (2, 1) and np.isfinite(sample.values).all()
        assert sample.future is None or np.asarray(sample.future).shape == (1, 1)


def stream(loop, X: np.ndarray, device: str = "d", start: int = 0) -> None:
    from schemas import WindowSample

    for i, w in enumerate(X):
        loop.learn(WindowSample(device, start + i * 100, start + i * 100 + 99, ["a", "b"], w.tolist(), "m", 1))


def test_windows_the_version_in_service_finds_abnormal_are_set_aside_until_called_normal(trained):
    import copy

    from operators.label_join import LabeledWindow
    from operators.learning import LearningLoop

    X, _, _ = waves(120, seed=20)
    flagged = spikes(X[:40], height=6.0)  # every one scores over 4 under the version in service
    loop = LearningLoop(copy.deepcopy(trained), SPEC, 1, LearningSettings(batch_size=8))
    stream(loop, flagged)
    assert loop.unlabeled_set_aside == 40 and len(loop.trainer.unlabeled_memory) == 0
    assert loop.trainer.unlabeled_learned == 0 and not loop.ssl_gate.windows  # neither learned nor held out
    stream(loop, X[40:], start=10_000)
    assert loop.unlabeled_set_aside - 40 <= 2 and len(loop.trainer.unlabeled_memory) > 50  # normal ones are learned
    loop.learn(LabeledWindow("d:1", "d", flagged[0], "", "", 1, ["ann"], 0, "m", "anomaly", verdict="normal"))
    assert len(loop.trainer.confirmed_normal) == 1  # a labeler's "normal" still teaches it the pattern
    # ... and that device's windows are learned again until a version fitted with the answer serves; others' are not
    def taken() -> int:  # unlabeled windows learned, waiting to be, or held out
        return loop.trainer.unlabeled_learned + len(loop.trainer.unlabeled) + len(loop.ssl_gate.windows)

    set_aside, before = loop.unlabeled_set_aside, taken()
    stream(loop, flagged[:16], device="e", start=20_000)
    assert loop.unlabeled_set_aside == set_aside + 16
    stream(loop, flagged[:16], start=30_000)
    assert loop.unlabeled_set_aside == set_aside + 16
    assert taken() == before + 16
    loop.adopt(2, loop.trainer.net)
    stream(loop, flagged[:16], start=40_000)
    assert loop.unlabeled_set_aside > set_aside + 16
    learn_all = LearningLoop(copy.deepcopy(trained), SPEC, 1, LearningSettings(batch_size=8, unlabeled_max_score=0))
    stream(learn_all, flagged)
    assert learn_all.unlabeled_set_aside == 0 and learn_all.trainer.unlabeled_learned > 0


def test_a_stream_of_faults_stops_being_flagged_only_when_every_window_is_learned(trained):
    """Why windows that look abnormal are set aside: learned as if normal, a fault teaches the model that it is."""
    import copy

    from operators.learning import LearningLoop

    X, _, _ = waves(240, seed=21)
    mixed = np.concatenate([spikes(X[:120], 6.0), X[120:]])[np.random.default_rng(0).permutation(240)]
    fresh = spikes(waves(100, seed=22)[0], 6.0)
    medians = {}
    for limit in (3.0, 0.0):
        loop = LearningLoop(copy.deepcopy(trained), SPEC, 1, LearningSettings(batch_size=8, unlabeled_max_score=limit))
        stream(loop, mixed)
        net = copy.deepcopy(loop.trainer.net).eval()
        net.fit_anomaly_scale(loop.trainer.unlabeled_memory.all()[0])  # as the next version is fitted
        medians[limit] = float(np.median(net.anomaly_score(torch.as_tensor(fresh)).detach().numpy()))
    assert medians[3.0] > 2.5 > medians[0.0] + 0.5, medians


def _anomaly_only_model() -> tuple[ModelSpec, WindowTransformer, np.ndarray]:
    """A small model with only an anomaly head, trained and its score fitted on waves; and its training windows."""
    spec = ModelSpec(window=WINDOW, channels=("a", "b"), classes=(), tasks=("anomaly",), d_model=16, n_heads=2,
                     n_layers=1, d_ff=32, dropout=0.0)
    X = waves(200, seed=30)[0]
    torch.manual_seed(0)
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    fit(net, X, None, epochs=5, seed=0)
    net.fit_anomaly_scale(waves(200, seed=31)[0])
    return spec, net, X


def test_answers_calling_windows_normal_publish_a_version_that_is_not_clearly_worse():
    """An anomaly model's candidate usually needs a clearly lower error on the held-out windows; once labelers
    called windows normal that the version in service lacks, one that is not clearly worse serves."""
    import copy

    from operators.label_join import LabeledWindow
    from operators.learning import LearningLoop
    from schemas import WindowSample

    spec, net, X = _anomaly_only_model()
    stream_windows = waves(160, seed=32)[0]
    reasons = {}
    for answered in (False, True):
        # a learning rate too small to change a weight: the candidate's errors tie the version in service's
        loop = LearningLoop(copy.deepcopy(net), spec, 1, LearningSettings(batch_size=8, gate_every=32, min_holdout=30,
                                                                          lr=1e-12))
        if answered:
            loop.learn(LabeledWindow("d:1", "d", spikes(X[:1], 6.0)[0], "", "", 1, ["ann"], 0, "m", "anomaly",
                                     verdict="normal"))
        candidates = [loop.learn(WindowSample("d", i * 100, i * 100 + 99, ["a", "b"], w.tolist(), "m", 1))
                      for i, w in enumerate(stream_windows)]
        reasons[answered] = [c.decision.reason for c in candidates if c is not None]
    assert reasons[False] == []
    assert reasons[True] and "labelers called normal on 1 device(s), and is not clearly worse" in reasons[True][0]
    # answers that come after the stream went quiet: each window called normal is learned and counts toward the
    # next check, so they publish a version without waiting for more of the stream
    loop = LearningLoop(copy.deepcopy(net), spec, 1, LearningSettings(batch_size=8, gate_every=32, min_holdout=30,
                                                                      lr=1e-12))
    assert not any(loop.learn(WindowSample("d", i * 100, i * 100 + 99, ["a", "b"], w.tolist(), "m", 1))
                   for i, w in enumerate(stream_windows))
    flagged = spikes(waves(40, seed=33)[0], 6.0)
    candidates = [loop.learn(LabeledWindow(f"d:{i}", "d", w, "", "", 1, ["ann"], 0, "m", "anomaly", verdict="normal"))
                  for i, w in enumerate(flagged)]
    proposed = [i for i, c in enumerate(candidates) if c is not None]
    assert proposed and proposed[0] < 32 and "labelers called normal" in candidates[proposed[0]].decision.reason


def test_the_publish_interval_of_a_model_that_does_not_classify_runs_on_the_streams_clock():
    """The devices' clock (window ends, here 2020) and the labelers' (answer times, here 2026) differ. A version
    published on answers calling windows normal must not start the interval on the labelers' clock: the
    windows' checks, on the devices' clock, would then wait years for it to pass."""
    import copy

    from operators.label_join import LabeledWindow
    from operators.learning import LearningLoop
    from schemas import WindowSample

    spec, net, X = _anomaly_only_model()
    device_t0, answered_at = 1_600_000_000_000, 1_790_000_000_000
    loop = LearningLoop(copy.deepcopy(net), spec, 1, LearningSettings(batch_size=8, gate_every=32, min_holdout=30,
                                                                      lr=1e-12, publish_interval_s=60))
    stream = waves(400, seed=32)[0]

    def window(i: int) -> WindowSample:  # one window a second on the devices' clock
        end = device_t0 + i * 1000
        return WindowSample("d", end - 99, end, ["a", "b"], stream[i].tolist(), "m", 1)

    assert not any(loop.learn(window(i)) for i in range(140))  # ties the version in service: nothing to publish
    flagged = spikes(waves(32, seed=33)[0], 6.0)
    answered = [loop.learn(LabeledWindow(f"d:{i}", "d", w, "", "", 1, ["ann"], answered_at, "m", "anomaly",
                                         verdict="normal")) for i, w in enumerate(flagged)]
    assert [c is not None for c in answered].count(True) == 1  # the answers' version: the first publication
    published = [i for i in range(140, 400) if loop.learn(window(i)) is not None]
    assert published, "the windows' checks never saw the interval pass"
    # every 32 windows a candidate is not worse; it waits until 60 s of the stream passed since the last one
    assert published[0] - 139 >= 60 and all(b - a >= 60 for a, b in zip(published, published[1:]))
    assert loop.deferred >= len(published)


class _Inverted(torch.nn.Module):
    """A network whose anomaly score ranks windows the other way round (a candidate that unlearned the faults)."""

    def __init__(self, net: WindowTransformer) -> None:
        super().__init__()
        self.net = net

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        return -self.net.anomaly_score(x)


def test_a_candidate_ranking_labeled_anomalies_clearly_worse_is_refused_on_pr_auc(trained):
    import copy

    from operators.label_join import LabeledWindow
    from operators.learning import MIN_LABELED_ANOMALIES, LearningLoop

    loop = LearningLoop(copy.deepcopy(trained), SPEC, 1, LearningSettings(batch_size=8))
    X, _, _ = waves(60, seed=23)
    for w in X:
        loop.ssl_gate.hold_out(w)
    for i, w in enumerate(spikes(X[:MIN_LABELED_ANOMALIES])):
        loop.learn(LabeledWindow(f"d:{i}", "d", w, "", "", 1, ["ann"], 0, "m", "anomaly", verdict="abnormal"))
    metrics, refusal = loop._anomaly_ranking()
    assert refusal is None and metrics["anomaly_pr_auc"] == metrics["serving_anomaly_pr_auc"] > 0.9
    assert metrics["labeled_anomalies"] == MIN_LABELED_ANOMALIES and metrics["anomaly_roc_auc"] > 0.9
    loop.trainer.net = _Inverted(loop.trainer.net)
    metrics, refusal = loop._anomaly_ranking()
    assert refusal is not None and "PR-AUC" in refusal and metrics["anomaly_pr_auc"] < 0.2


@BOUNDED
@given(positive=st.lists(st.integers(0, 6), min_size=1, max_size=20),
       negative=st.lists(st.integers(0, 6), min_size=1, max_size=40))
def test_average_precision_is_scikit_learns(positive, negative):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from operators.learning import average_precision, roc_auc

    p, n = np.asarray(positive, float), np.asarray(negative, float)
    truth, scores = np.r_[np.ones(len(p)), np.zeros(len(n))], np.r_[p, n]
    assert abs(average_precision(p, n) - average_precision_score(truth, scores)) < 1e-9
    assert abs(roc_auc(p, n) - roc_auc_score(truth, scores)) < 1e-9
