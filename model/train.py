"""Supervised training of the window classifier, and the bootstrap that writes version 1."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from torch import nn

from model.augment import WindowAugmenter
from model.calibration import MIN_WINDOWS, calibrate, class_bias_of
from model.datasets import load_basic_motions, sliding_windows
from model.export import export_onnx
from model.network import FLATNESS_BUFFERS, WindowTransformer
from model.quantize import agreement, quantize_int8
from model.registry import INT8_FILE, ModelRegistry, VersionMetadata
from model.self_supervised import self_supervised_loss, windows_with_future
from model.slda import LDA_FILE, StreamingLDA
from model.spec import ModelSpec

log = logging.getLogger(__name__)


def encode_labels(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Map class names to indices; an unknown name is an error, never a silent drop.

    >>> encode_labels(["b", "a"], ["a", "b"]).tolist()
    [1, 0]
    """
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.asarray([index[label] for label in labels], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"label {exc.args[0]!r} is not one of the classes {list(classes)}") from None


def fit(net: nn.Module, X: np.ndarray, y: np.ndarray | None, epochs: int = 20, lr: float = 2e-3,
        batch_size: int = 64, seed: int = 0, weight_decay: float = 1e-4,
        future: np.ndarray | None = None, augment_copies: int = 0) -> list[float]:
    """Plain mini-batch Adam training; returns the mean loss of each epoch. The loss is the cross-entropy on
    ``y`` (where the model classifies) plus the self-supervised objectives of its other heads
    (``model.self_supervised``; the forecast's only with ``future``, the samples after each window).

    With ``augment_copies``, each epoch also trains on that many fresh augmented copies of every window
    (``model.augment.WindowAugmenter``: gain, offset, speed and noise), for models that must serve people
    or sensors the training data does not have. Not with ``future`` (a copy's following samples are unknown)."""
    if augment_copies and future is not None:
        raise ValueError("augment_copies cannot be used with a forecast target (future)")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    classifies = y is not None and net.spec.has("classify")
    Xt = torch.as_tensor(X, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long) if classifies else None
    Ft = torch.as_tensor(future, dtype=torch.float32) if future is not None else None
    losses = []
    net.train()
    for _ in range(epochs):
        if augment_copies:
            Xe, ye = WindowAugmenter().expand(np.asarray(X, np.float32), y if classifies else np.zeros(len(X)),
                                              augment_copies, rng)
            Xt = torch.as_tensor(Xe)
            yt = torch.as_tensor(ye, dtype=torch.long) if classifies else None
        order = rng.permutation(len(Xt))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = torch.as_tensor(order[start:start + batch_size])
            loss = self_supervised_loss(net, Xt[idx], Ft[idx] if Ft is not None else None)
            if yt is not None:
                loss = loss + nn.functional.cross_entropy(net(Xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        losses.append(total / len(Xt))
    net.eval()
    return losses


def accuracy(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == y).mean()) if len(y) else float("nan")


@torch.inference_mode()
def predict_proba(net: nn.Module, X: np.ndarray) -> np.ndarray:
    net.eval()
    return torch.softmax(net(torch.as_tensor(X, dtype=torch.float32)), -1).numpy()


def weights_bytes(net: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


def load_network(spec: ModelSpec, weights: bytes, older_classes: bool = False) -> WindowTransformer:
    """Rebuild a network from registry weights. With ``older_classes``, the weights may be of a version
    from before classes were added (its output layer has only the first of ``spec.classes``)."""
    state = torch.load(io.BytesIO(weights), weights_only=True)
    if older_classes and "head.weight" in state:
        spec = replace(spec, classes=spec.classes[:state["head.weight"].shape[0]])
    net = WindowTransformer(spec)
    result = net.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - set(FLATNESS_BUFFERS)
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weights do not fit the model: missing {sorted(missing)}, "
                           f"unexpected {sorted(result.unexpected_keys)}")
    return net.eval()


def lda_of(net: WindowTransformer, X: np.ndarray, y: np.ndarray) -> bytes:
    """LDA statistics of a network's features on its training windows (``publish_version``'s ``lda``)."""
    feats = net.window_features(X)
    lda = StreamingLDA(feats.shape[1], net.spec.n_classes)
    lda.learn_many(feats, y)
    return lda.to_bytes()


@torch.inference_mode()
def logits_of(net: nn.Module, X: np.ndarray) -> np.ndarray:
    net.eval()
    return net(torch.as_tensor(X, dtype=torch.float32)).numpy()


def publish_version(registry: ModelRegistry, name: str, net: nn.Module, spec: ModelSpec,
                    metrics: dict[str, float], parent_version: int | None = None, data_seen: int = 0,
                    note: str = "", calibration: tuple[np.ndarray, np.ndarray] | None = None,
                    int8_min_agreement: float | None = None, lda: bytes | None = None,
                    normal_windows: np.ndarray | None = None,
                    confirmed_normal: np.ndarray | None = None,
                    calibration_mode: str = "temperature") -> VersionMetadata:
    """Export a network to ONNX and write it, with its weights, as the next registry version. With
    ``calibration`` (held-out windows and their labels, at least ``MIN_WINDOWS``), a temperature is
    fitted on them and baked into the exported probabilities; the version's metrics record it with
    the expected calibration error before and after (``model.calibration.calibrate``); with
    ``calibration_mode`` "temperature_bias" one bias per class is fitted and baked in beside it, with "auto"
    only where they help (``model.calibration.biases_help``).

    With ``int8_min_agreement``, an INT8 graph (``model.quantize``) is made too and kept beside the
    model only when it predicts the same class as the FP32 graph on at least that share of the
    held-out windows; the metrics record the agreement either way (no held-out windows: no INT8).

    ``lda`` (``StreamingLDA.to_bytes``: class statistics of this network's features) is kept beside it,
    so a learner with ``head = "lda"`` starting from this version starts from them.

    A model with an anomaly head has its score's centre and scale fitted on ``normal_windows`` (held-out
    windows taken as normal) when given, and on ``confirmed_normal`` (windows people said are normal: their
    patterns become centres of normal, ``WindowTransformer.fit_anomaly_scale``). Calibration and INT8 are
    for classifying models."""
    temperature, class_bias = 1.0, None
    classifies = spec.has("classify")
    if normal_windows is not None and spec.has("anomaly") and len(normal_windows):
        net.fit_anomaly_scale(normal_windows, confirmed=confirmed_normal)
        low, high = np.percentile(np.asarray(normal_windows).reshape(-1, spec.n_channels), [1, 99], axis=0)
        spec = replace(spec, extra={**spec.extra, "normal_range": np.round(np.stack([low, high], 1), 5).tolist()})
        center, scale = net.score_center.tolist(), net.score_scale.tolist()
        metrics = {**metrics, "anomaly_reconstruction_center": center[0], "anomaly_reconstruction_scale": scale[0],
                   "anomaly_distance_center": center[1], "anomaly_distance_scale": scale[1],
                   "anomaly_normal_windows": float(len(normal_windows)),
                   "anomaly_confirmed_normal": float(len(confirmed_normal) if confirmed_normal is not None else 0)}
    if classifies and calibration is not None and len(calibration[1]) >= MIN_WINDOWS:
        logits, labels = logits_of(net, calibration[0]), np.asarray(calibration[1])
        fitted = calibrate(logits, labels, calibration_mode)
        temperature, class_bias = fitted["temperature"], class_bias_of(fitted, spec.n_classes)
        metrics = {**metrics, **fitted}
    onnx_bytes, extra = export_onnx(net, spec, temperature=temperature, class_bias=class_bias), {}
    if lda is not None:
        extra[LDA_FILE] = lda
    if int8_min_agreement is not None and not classifies:
        log.warning("%s: INT8 is checked on class agreement, and this model does not classify: none kept", name)
    elif int8_min_agreement is not None:
        if calibration is not None and len(calibration[0]):
            int8, checked = int8_graph(name, onnx_bytes, np.asarray(calibration[0], np.float32), int8_min_agreement)
            metrics = {**metrics, **checked}
            if int8 is not None:
                extra[INT8_FILE] = int8
        else:
            log.warning("%s: no held-out windows to check an INT8 graph against: none kept", name)
    return registry.publish(name, onnx_bytes, weights_bytes(net), spec.to_dict(), metrics=metrics,
                            parent_version=parent_version, data_seen=data_seen, note=note, extra=extra)


def int8_graph(name: str, onnx_bytes: bytes, held_out: np.ndarray, min_agreement: float
               ) -> tuple[bytes | None, dict[str, float]]:
    """The INT8 graph of a version when it predicts the FP32 graph's class on at least ``min_agreement`` of the
    held-out windows (else None; the log says why), and the metrics of the check. A graph the quantizer or
    ONNX Runtime refuses gives none and ``int8_failed``: the version is published and serves FP32."""
    try:
        int8 = quantize_int8(onnx_bytes)
        check = agreement(onnx_bytes, int8, held_out)
    except Exception as exc:  # noqa: BLE001 (whatever the quantizer raised, the FP32 version stands)
        log.warning("%s: no INT8 graph could be made (%s: %s): none kept", name, type(exc).__name__, exc)
        return None, {"int8_failed": 1.0}
    metrics = {"int8_agreement": check.top1, "int8_max_prob_diff": check.max_prob_diff,
               "int8_windows": float(check.windows)}
    if check.accepts(min_agreement):
        return int8, metrics
    log.warning("%s: INT8 graph refused: same class on %.3f of %d held-out windows (at least %.3f needed)",
                name, check.top1, check.windows, min_agreement)
    return None, metrics


def basic_motions_windows(split: str, spec: ModelSpec, stride: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """BasicMotions windows of a split with their labels and, for a forecasting model, the ``spec.horizon``
    samples after each (only windows followed by that many samples in their recording)."""
    rec = load_basic_motions(split)
    if not spec.has("forecast"):
        X, labels = sliding_windows(rec, spec.window, stride)
        return X, labels, None
    parts = [windows_with_future(series, spec.window, spec.horizon, stride) for series in rec.series]
    labels = np.concatenate([[label] * len(x) for (x, _), label in zip(parts, rec.labels)])
    return np.concatenate([x for x, _ in parts]), labels, np.concatenate([f for _, f in parts])


@torch.inference_mode()
def forecast_report(net: WindowTransformer, X: np.ndarray, future: np.ndarray) -> dict[str, float]:
    """Mean absolute forecast error over windows and channels (raw units), beside the last-value baseline's."""
    predicted = net.eval().forecast(torch.as_tensor(X, dtype=torch.float32)).numpy()
    return {"test_forecast_mae": float(np.abs(predicted - future).mean()),
            "test_forecast_mae_last_value": float(np.abs(X[:, -1:, :] - future).mean())}


@dataclass
class BootstrapResult:
    metadata: VersionMetadata
    train_seconds: float
    losses: list[float]


def bootstrap(registry: ModelRegistry, name: str = "basic-motions", spec: ModelSpec | None = None,
              epochs: int = 25, stride: int = 4, seed: int = 0,
              int8_min_agreement: float | None = None) -> BootstrapResult:
    """Train on the BasicMotions train split, evaluate on the test split, publish a version (with every head
    of ``spec.tasks``; the forecast learns from the samples after each window)."""
    spec = spec or ModelSpec()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    X, labels, F = basic_motions_windows("train", spec, stride)
    Xte, labels_te, Fte = basic_motions_windows("test", spec, spec.window // 2)
    classifies = spec.has("classify")
    y, yte = (encode_labels(labels, spec.classes), encode_labels(labels_te, spec.classes)) if classifies else (None,
                                                                                                              None)
    torch.manual_seed(seed)  # the initial weights too, so a version 1 is reproducible
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    started = time.perf_counter()
    losses = fit(net, X, y, epochs=epochs, seed=seed, future=F)
    seconds = time.perf_counter() - started
    metrics = {"train_windows": float(len(X))}
    if classifies:
        metrics.update(test_accuracy=accuracy(predict_proba(net, Xte), yte),
                       train_accuracy=accuracy(predict_proba(net, X), y))
    if spec.has("forecast"):
        metrics.update(forecast_report(net, Xte, Fte))
    meta = publish_version(registry, name, net, spec, metrics, data_seen=len(X),
                           note="bootstrap: BasicMotions train split", calibration=(Xte, yte) if classifies else None,
                           int8_min_agreement=int8_min_agreement, lda=lda_of(net, X, y) if classifies else None,
                           normal_windows=Xte)
    log.info("published %s v%d: %s", name, meta.version, metrics)
    return BootstrapResult(meta, seconds, losses)
