import numpy as np
import pytest
import torch

from model.datasets import load_basic_motions, sliding_windows
from model.export import export_onnx
from model.network import WindowTransformer
from model.registry import ArtifactError, ModelRegistry
from model.runtime import OnnxRunner, TorchRunner, choose_providers
from model.spec import ModelSpec
from model.train import accuracy, encode_labels, fit, load_network, predict_proba, weights_bytes
from operators.serving_model import build_serving_model, smoke_test

SPEC = ModelSpec(window=8, channels=("a", "b", "c"), classes=("lo", "hi"), d_model=16, n_heads=2, n_layers=1, d_ff=32)


def synthetic(n=256, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, SPEC.window, SPEC.n_channels)).astype(np.float32) + (y * 2.0)[:, None, None] + 5.0
    return X, y


@pytest.fixture(scope="module")
def trained():
    X, y = synthetic()
    net = WindowTransformer(SPEC)
    net.set_normalisation(X)
    losses = fit(net, X, y, epochs=8, batch_size=32)
    return net, X, y, losses


@pytest.fixture(scope="module")
def onnx_bytes(trained):
    return export_onnx(trained[0], SPEC)


def test_training_learns_a_separable_task(trained):
    net, X, y, losses = trained
    assert losses[-1] < losses[0] * 0.5
    Xv, yv = synthetic(seed=1)
    assert accuracy(predict_proba(net, Xv), yv) > 0.9


def test_normalisation_is_inside_the_network(trained):
    net = trained[0]
    assert net.mean.mean().item() > 4.0  # fitted on data centred near 5-7


def test_onnx_matches_torch_at_every_batch_size(trained, onnx_bytes):
    net = trained[0]
    runner = OnnxRunner(onnx_bytes, prefer="cpu")
    assert runner.provider == "CPUExecutionProvider"
    for b in (1, 3, 64):
        x = synthetic(b, seed=b)[0]
        np.testing.assert_allclose(runner.predict_proba(x), predict_proba(net, x), atol=1e-5)


def test_torch_runner_and_weights_round_trip(trained):
    net = trained[0]
    clone = load_network(SPEC, weights_bytes(net))
    x = synthetic(5)[0]
    np.testing.assert_allclose(TorchRunner(clone).predict_proba(x), predict_proba(net, x), atol=1e-6)


def test_cpu_machine_chooses_cpu_provider():
    providers = choose_providers("auto")
    assert providers[-1] == "CPUExecutionProvider"
    if not torch.cuda.is_available():
        assert providers == ["CPUExecutionProvider"]


def test_registry_versions_and_checksums(tmp_path, trained, onnx_bytes):
    reg = ModelRegistry(tmp_path)
    w = weights_bytes(trained[0])
    m1 = reg.publish("m", onnx_bytes, w, SPEC.to_dict(), {"acc": 0.9})
    m2 = reg.publish("m", onnx_bytes, w, SPEC.to_dict(), {"acc": 0.95}, parent_version=1)
    assert (m1.version, m2.version, m2.parent_version) == (1, 2, 1)
    assert reg.versions("m") == [1, 2]
    loaded = reg.load("m")
    assert loaded.metadata.version == 2 and loaded.artifact_uri.startswith("file://")
    model = build_serving_model(loaded)
    assert model.version == 2 and model.spec == SPEC
    # corrupt the artifact: the registry refuses it
    path = reg.version_dir("m", 2) / "model.onnx"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        reg.load("m", 2)
    assert reg.load("m", 1).metadata.version == 1


def test_garbage_onnx_with_matching_checksum_is_refused(tmp_path, trained):
    reg = ModelRegistry(tmp_path)
    reg.publish("m", b"not an onnx graph", weights_bytes(trained[0]), SPEC.to_dict())
    with pytest.raises(ArtifactError, match="cannot load"):
        build_serving_model(reg.load("m"))


def test_smoke_test_refuses_wrong_output_shape(onnx_bytes):
    runner = OnnxRunner(onnx_bytes, prefer="cpu")
    wrong = ModelSpec(window=8, channels=("a", "b", "c"), classes=("x", "y", "z"))
    with pytest.raises(ArtifactError, match="shape"):
        smoke_test(runner, wrong)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no version"):
        ModelRegistry(tmp_path).load("absent")


def test_unknown_label_is_an_error():
    with pytest.raises(ValueError, match="not one of the classes"):
        encode_labels(["lo", "sideways"], SPEC.classes)


def test_basic_motions_ships_offline():
    rec = load_basic_motions("test")
    assert rec.series.shape == (40, 100, 6) and set(rec.labels) == {"badminton", "running", "standing", "walking"}
    X, y = sliding_windows(rec, 32, 16)
    assert X.shape == (40 * 5, 32, 6) and len(y) == len(X)


def test_snapshot_loading_verifies_everything(tmp_path, trained, onnx_bytes):
    from operators.serving_model import load_snapshot
    from schemas import ModelSnapshot

    reg = ModelRegistry(tmp_path)
    w = weights_bytes(trained[0])
    reg.publish("m", onnx_bytes, w, SPEC.to_dict())
    reg.publish("m", onnx_bytes, w, SPEC.to_dict(), parent_version=1)
    good = ModelSnapshot.from_dict(reg.announcement("m", 2))
    assert load_snapshot(good).version == 2
    assert load_snapshot(good, runtime="torch").runner.provider == "torch-cpu"
    wrong_sha = ModelSnapshot.from_dict({**reg.announcement("m", 2), "sha256": "0" * 64})
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_snapshot(wrong_sha)
    misnamed = ModelSnapshot.from_dict({**reg.announcement("m", 2), "version": 7})
    with pytest.raises(ArtifactError, match="announced as m v7"):
        load_snapshot(misnamed)
    missing = ModelSnapshot.from_dict({**reg.announcement("m", 2), "artifact_uri": "file:///nowhere/model.onnx"})
    with pytest.raises(ArtifactError, match="cannot read"):
        load_snapshot(missing)


def test_dynamo_export_matches_too(trained):
    net = trained[0]
    runner = OnnxRunner(export_onnx(net, SPEC, dynamo=True), prefer="cpu")
    x = synthetic(7, seed=3)[0]
    np.testing.assert_allclose(runner.predict_proba(x), predict_proba(net, x), atol=1e-5)


def test_a_published_version_carries_its_calibration_and_serves_calibrated_probabilities(tmp_path):
    """A network trained to memorise noisy labels is overconfident; the temperature fitted on held-out
    windows is baked into the ONNX graph, and the cross-fitted calibration error falls."""
    from model.calibration import ece, softmax
    from model.registry import ModelRegistry
    from model.runtime import OnnxRunner
    from model.train import fit, logits_of, publish_version

    spec = ModelSpec(window=8, channels=("a", "b"), classes=("c0", "c1", "c2"), d_model=16, n_heads=2, n_layers=1,
                     d_ff=32, dropout=0.0)
    rng = np.random.default_rng(0)

    def noisy(n):
        y = rng.integers(0, 3, n)
        X = rng.normal(0, 1.0, size=(n, 8, 2)).astype(np.float32)
        X[:, :, 0] += 0.8 * y[:, None]
        flip = rng.random(n) < 0.25
        return X, np.where(flip, rng.integers(0, 3, n), y)

    X, y = noisy(400)
    Xh, yh = noisy(300)
    torch.manual_seed(0)
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    fit(net, X, y, epochs=60, lr=3e-3, batch_size=32)
    meta = publish_version(ModelRegistry(str(tmp_path)), "m", net, spec, {}, calibration=(Xh, yh))
    m = meta.metrics
    assert m["temperature"] > 1.2 and m["ece_after"] < m["ece_before"], m  # was overconfident; less so
    served = OnnxRunner(ModelRegistry(str(tmp_path)).load("m", 1).onnx_bytes).predict_proba(Xh)
    np.testing.assert_allclose(served, softmax(logits_of(net, Xh) / m["temperature"]), atol=1e-4)
    assert ece(served, yh) < ece(softmax(logits_of(net, Xh)), yh)
    few = publish_version(ModelRegistry(str(tmp_path)), "m", net, spec, {}, calibration=(Xh[:5], yh[:5]))
    assert "temperature" not in few.metrics  # too few held-out windows to fit one


def test_ece_noise_bounds_a_calibrated_models_ece_and_not_an_overconfident_ones():
    """Labels drawn from the model's own probabilities (perfect calibration by construction): its ECE is
    under ``ece_noise`` in about 95 % of samples of 150 windows; an overconfident model's is not."""
    from model.calibration import ece, ece_noise, softmax

    rng = np.random.default_rng(3)
    under, over = [], []
    for _ in range(60):
        p = softmax(rng.normal(0, 1.5, (150, 5)))
        labels = np.asarray([rng.choice(5, p=row) for row in p])
        noise = ece_noise(p, draws=200, seed=int(rng.integers(1 << 30)))
        under.append(ece(p, labels) <= noise)
        sure = softmax(np.log(p) * 3)  # the same model, far surer of itself
        over.append(ece(sure, labels) > ece_noise(sure, draws=200))
    assert 0.85 <= np.mean(under) <= 1.0 and np.mean(over) > 0.9, (np.mean(under), np.mean(over))


def test_a_version_calibrated_with_class_biases_serves_them_in_both_runtimes(tmp_path):
    """``learning.calibration = "temperature_bias"``: a model that favours one class on the held-out
    windows gets a negative bias for it; the exported graph and the torch runtime both serve
    ``softmax(logits / T + bias)``, and its cross-fitted ECE is lower than with the temperature alone."""
    from model.calibration import calibrate, class_bias_of, softmax
    from model.train import logits_of, publish_version
    from operators.serving_model import load_from_registry
    from settings import LearningSettings

    spec = ModelSpec(window=8, channels=("a", "b"), classes=("x", "y", "z"), d_model=16, n_heads=2, n_layers=1,
                     d_ff=32)
    rng = np.random.default_rng(1)

    def windows(n, shift):
        y = rng.integers(0, 3, n)
        X = rng.normal(0, 1.0, size=(n, 8, 2)).astype(np.float32)
        X[:, :, 0] += 0.8 * y[:, None] + shift  # held-out data moved towards class z
        return X, y

    X, y = windows(400, 0.0)
    Xh, yh = windows(600, 0.6)
    torch.manual_seed(0)
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    fit(net, X, y, epochs=40, lr=3e-3, batch_size=32)
    registry = ModelRegistry(str(tmp_path))
    meta = publish_version(registry, "m", net, spec, {}, calibration=(Xh, yh), calibration_mode="temperature_bias")
    bias = class_bias_of(meta.metrics, 3)
    assert bias is not None and bias[2] < bias[0], bias  # the favoured class is pulled down
    expected = softmax(logits_of(net, Xh) / meta.metrics["temperature"] + bias)
    np.testing.assert_allclose(OnnxRunner(registry.load("m", 1).onnx_bytes).predict_proba(Xh), expected, atol=1e-4)
    np.testing.assert_allclose(load_from_registry(str(tmp_path), "m", runtime="torch").runner.predict_proba(Xh),
                               expected, atol=1e-4)
    plain = calibrate(logits_of(net, Xh), yh)
    assert meta.metrics["ece_after"] < plain["ece_after"], (meta.metrics["ece_after"], plain["ece_after"])
    assert class_bias_of(plain, 3) is None
    # "auto": the biases where they fix what the temperature leaves (these windows), none where a temperature is
    # all it takes (windows like the training data)
    auto = publish_version(registry, "m", net, spec, {}, calibration=(Xh, yh), calibration_mode="auto")
    assert class_bias_of(auto.metrics, 3) is not None
    Xs, ys = windows(600, 0.0)
    assert class_bias_of(publish_version(registry, "m", net, spec, {}, calibration=(Xs, ys),
                                         calibration_mode="auto").metrics, 3) is None
    with pytest.raises(ValueError, match="calibration must be temperature, temperature_bias or auto"):
        LearningSettings(calibration="platt")


def test_training_with_augmented_copies_sees_fresh_copies_every_epoch():
    """``fit(augment_copies=2)``: each epoch trains on the windows and two augmented copies of each, new
    ones every epoch (gain, offset, speed and noise: ``model.augment``), and still learns the task."""
    X, y = synthetic()
    net = WindowTransformer(SPEC)
    net.set_normalisation(X)
    seen: list[torch.Tensor] = []
    hook = net.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    fit(net, X, y, epochs=2, batch_size=64, augment_copies=2)
    hook.remove()
    epochs = [torch.cat(seen[:12]), torch.cat(seen[12:])]  # 768 windows an epoch: 12 batches of 64
    assert len(seen) == 24 and all(len(e) == 3 * len(X) for e in epochs)
    originals = {w.tobytes() for w in X.astype(np.float32)}
    for e in epochs:  # each window once, and two copies of it that are not
        assert sum(w.numpy().tobytes() in originals for w in e) == len(X)
    assert not torch.equal(*(torch.sort(e.reshape(len(e), -1).sum(1)).values for e in epochs))  # fresh copies
    Xv, yv = synthetic(seed=1)
    assert accuracy(predict_proba(net, Xv), yv) > 0.9
    with pytest.raises(ValueError, match="forecast"):
        fit(net, X, y, epochs=1, augment_copies=1, future=X[:, :2])
