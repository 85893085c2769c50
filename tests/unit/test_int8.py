"""INT8 versions: made on publish when asked, kept only when they agree with FP32 on the held-out
windows, verified by sha256 like every artifact, announced with their hash, and served per model."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from model.datasets import load_basic_motions, sliding_windows
from model.registry import INT8_FILE, ArtifactError, ModelRegistry
from model.spec import ModelSpec
from model.train import encode_labels, load_network, publish_version
from operators.serving_model import load_from_registry, load_snapshot
from schemas import ModelSnapshot
from settings import Config, load_config

NAME = "basic-motions"


def held_out():
    X, labels = sliding_windows(load_basic_motions("test"), 32, 16)
    return X, encode_labels(labels, ModelSpec().classes)


def test_an_int8_graph_that_agrees_is_kept_verified_announced_and_served(registry_copy):
    registry = ModelRegistry(registry_copy)
    v1 = registry.load(NAME, 1)
    spec = ModelSpec.from_dict(v1.metadata.spec)
    X, y = held_out()
    meta = publish_version(registry, NAME, load_network(spec, v1.weights_bytes), spec, {}, parent_version=1,
                           calibration=(X, y), int8_min_agreement=0.98)
    assert INT8_FILE in meta.artifacts and meta.metrics["int8_agreement"] >= 0.98
    assert meta.metrics["int8_windows"] == len(X)
    fp32 = load_from_registry(registry_copy, NAME, meta.version)
    int8 = load_from_registry(registry_copy, NAME, meta.version, precision="int8")
    assert (fp32.precision, int8.precision) == ("fp32", "int8") and "int8" in int8.provider
    a, b = fp32.runner.predict_proba(X), int8.runner.predict_proba(X)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.98 and not np.array_equal(a, b)  # a different graph
    snapshot = ModelSnapshot.decode(ModelSnapshot.from_dict(registry.announcement(NAME, meta.version)).encode())
    assert snapshot.int8_sha256 == meta.artifacts[INT8_FILE]
    assert load_snapshot(snapshot, registry_root=registry_copy, precision="int8").precision == "int8"
    forged = ModelSnapshot.from_dict({**registry.announcement(NAME, meta.version), "int8_sha256": "0" * 64})
    with pytest.raises(ArtifactError, match="announced INT8 sha256"):
        load_snapshot(forged, registry_root=registry_copy, precision="int8")
    (registry.version_dir(NAME, meta.version) / INT8_FILE).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="INT8 graph of basic-motions v2 does not match its sha256"):
        load_from_registry(registry_copy, NAME, meta.version, precision="int8")


def test_an_int8_graph_that_disagrees_is_refused_and_serving_says_it_serves_fp32(registry_copy, monkeypatch,
                                                                                   caplog):
    import model.train as train
    from model.export import export_onnx
    from model.network import WindowTransformer

    registry = ModelRegistry(registry_copy)
    v1 = registry.load(NAME, 1)
    spec = ModelSpec.from_dict(v1.metadata.spec)
    other = export_onnx(WindowTransformer(spec).eval(), spec)  # a quantization that broke the model
    monkeypatch.setattr(train, "quantize_int8", lambda onnx_bytes: other)
    X, y = held_out()
    meta = publish_version(registry, NAME, load_network(spec, v1.weights_bytes), spec, {}, calibration=(X, y),
                           int8_min_agreement=0.98)
    assert INT8_FILE not in meta.artifacts and meta.metrics["int8_agreement"] < 0.98
    assert "int8_sha256" not in registry.announcement(NAME, meta.version)
    with caplog.at_level(logging.WARNING):
        model = load_from_registry(registry_copy, NAME, meta.version, precision="int8")
    assert model.precision == "fp32"
    assert any("has no INT8 graph to serve (INT8 agreement" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("n_layers,patch", [(2, 1), (3, 4)])
def test_an_untrained_models_int8_graph_loads_and_agrees(n_layers, patch):
    """The layers of an untrained encoder are copies of one another, which the exporter stores once and reads
    through Identity nodes; the quantizer's graph of that did not load (ONNX Runtime: incompatible dimensions)."""
    import onnx

    from model.export import export_onnx
    from model.network import WindowTransformer
    from model.quantize import agreement, quantize_int8

    spec = ModelSpec(n_layers=n_layers, patch=patch)
    fp32 = export_onnx(WindowTransformer(spec).eval(), spec)
    assert "Identity" in {n.op_type for n in onnx.load_from_string(fp32).graph.node}  # the case this is about
    int8 = quantize_int8(fp32)
    assert "MatMulInteger" in {n.op_type for n in onnx.load_from_string(int8).graph.node}
    check = agreement(fp32, int8, np.random.default_rng(0).normal(size=(64, 32, 6)).astype(np.float32))
    assert check.windows == 64 and check.top1 >= 0.9


def test_fp32_scores_a_window_alike_in_any_batch_and_int8_nearly(trained_registry):
    """FP32 gives a window the same probabilities whatever windows share its batch (a replay scores it alike).
    INT8 quantizes a batch's activations with the batch's range, so its probabilities move a little with the
    batch: measured here, on the held-out windows in shuffled batches of 64 against each window alone."""
    from model.quantize import quantize_int8
    from model.runtime import OnnxRunner

    loaded = ModelRegistry(trained_registry).load(NAME, 1)
    X = held_out()[0].astype(np.float32)
    order = np.random.default_rng(0).permutation(len(X))
    for graph, worst in ((loaded.onnx_bytes, 1e-6), (quantize_int8(loaded.onnx_bytes), 0.1)):
        runner = OnnxRunner(graph, prefer="cpu", threads=1)
        alone = np.concatenate([runner.predict_proba(x[None]) for x in X])
        batched = np.empty_like(alone)
        for k in range(0, len(X), 64):
            batched[order[k:k + 64]] = runner.predict_proba(X[order[k:k + 64]])
        moved = np.abs(batched - alone).max(axis=1)
        assert moved.max() < worst and np.median(moved) < 1e-3, (moved.max(), np.median(moved))
        assert (batched.argmax(1) == alone.argmax(1)).mean() >= 0.99


def test_a_graph_the_quantizer_refuses_is_published_fp32_and_serving_says_why(registry_copy, monkeypatch, caplog,
                                                                               capsys):
    import model.train as train
    from control.cli import _version_table

    def refuse(onnx_bytes):
        raise RuntimeError("Incompatible dimensions for matrix multiplication")

    registry = ModelRegistry(registry_copy)
    v1 = registry.load(NAME, 1)
    spec = ModelSpec.from_dict(v1.metadata.spec)
    monkeypatch.setattr(train, "quantize_int8", refuse)
    X, y = held_out()
    with caplog.at_level(logging.WARNING):
        meta = publish_version(registry, NAME, load_network(spec, v1.weights_bytes), spec, {}, calibration=(X, y),
                               int8_min_agreement=0.98)
        model = load_from_registry(registry_copy, NAME, meta.version, precision="int8")
    assert INT8_FILE not in meta.artifacts and meta.metrics["int8_failed"] == 1.0
    assert "int8_agreement" not in meta.metrics
    assert model.precision == "fp32" and model.runner.predict_proba(X[:4]).shape == (4, len(spec.classes))
    messages = [r.getMessage() for r in caplog.records]
    assert any("no INT8 graph could be made (RuntimeError: Incompatible dimensions" in m for m in messages)
    assert any("no INT8 graph could be made when it was published): serving FP32" in m for m in messages)
    _version_table(registry_copy, NAME)  # `model list`: the version's INT8 column says it failed
    rows = {cells[0]: cells for cells in map(str.split, capsys.readouterr().out.splitlines())
            if cells and cells[0].isdigit()}
    assert "failed" in rows[str(meta.version)] and "failed" not in rows["1"]


def test_precision_is_chosen_per_model(tmp_path):
    path = tmp_path / "sensorloop.toml"
    path.write_text('[serving]\nprecision = "int8"\n[models.g]\nchannels = ["x"]\nsample_rate_hz = 10\nwindow = 8\n'
                    'stride = 8\nclasses = ["a", "b"]\nprecision = "fp32"\n')
    cfg = load_config(path, env={})
    assert cfg.precision_of("g") == "fp32" and cfg.precision_of("basic-motions") == "int8"
    assert cfg.int8_check("g") is None and cfg.int8_check("basic-motions") == 0.98
    assert Config().int8_check("basic-motions") is None
