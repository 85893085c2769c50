"""A first model from an imported dataset: windows cut within each recording, a split by device (or,
with fewer than four devices, by recording) so no recording has windows on both sides, training,
a per-class report, and the version published with the dataset's fingerprint.

>>> import numpy as np
>>> from recordings.store import Dataset, DeviceSeries
>>> ts = np.arange(10) * 100
>>> series = DeviceSeries(ts, np.zeros((10, 1), np.float32), np.array([0] * 6 + [1] * 4))
>>> cut = cut_windows(Dataset("d", {"sample_rate_hz": 10}, {"dev": series}), window=4, stride=2)
>>> cut.y.tolist(), cut.skipped_mixed
([0, 0, 1], 1)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from model.evaluation import class_report
from model.network import WindowTransformer
from model.registry import ModelRegistry, VersionMetadata
from model.spec import ModelSpec
from model.train import fit, lda_of, predict_proba, publish_version
from recordings.store import Dataset

log = logging.getLogger(__name__)
GAP_INTERVALS = 3  # a silence longer than this many sample intervals starts a new recording


@dataclass(frozen=True)
class Windows:
    X: np.ndarray  # [n, window, channels]
    y: np.ndarray  # class index
    device: np.ndarray  # per window
    recording: np.ndarray  # per window: "device/segment"
    skipped_mixed: int  # windows whose samples carry more than one label (or none)


def cut_windows(dataset: Dataset, window: int, stride: int) -> Windows:
    """Every labeled window inside one recording; a window of mixed or missing labels is skipped."""
    max_gap = GAP_INTERVALS * 1000.0 / float(dataset.manifest["sample_rate_hz"])
    xs, ys, devices, recordings, skipped = [], [], [], [], 0
    for device, series in dataset.devices.items():
        for k, segment in enumerate(series.segments(max_gap)):
            values, labels = np.asarray(series.values[segment]), np.asarray(series.labels[segment])
            for start in range(0, len(labels) - window + 1, stride):
                part = labels[start:start + window]
                if part[0] < 0 or (part != part[0]).any():
                    skipped += 1
                    continue
                xs.append(values[start:start + window])
                ys.append(int(part[0]))
                devices.append(device)
                recordings.append(f"{device}/{k}")
    n_channels = len(dataset.manifest.get("channels", [])) or (xs[0].shape[1] if xs else 0)
    X = np.stack(xs).astype(np.float32) if xs else np.zeros((0, window, n_channels), np.float32)
    return Windows(X, np.asarray(ys, np.int64), np.asarray(devices), np.asarray(recordings), skipped)


def held_out(windows: Windows, share: float = 0.25, seed: int = 0) -> tuple[np.ndarray, str]:
    """A mask of test windows: whole devices when there are four or more, else whole recordings."""
    rng = np.random.default_rng(seed)
    devices = np.unique(windows.device)
    by, groups = ("device", windows.device) if len(devices) >= 4 else ("recording", windows.recording)
    names = np.unique(groups)
    if len(names) < 2:
        raise ValueError(f"cannot hold out data: the dataset has a single {by} ({names.tolist()})")
    n_test = max(1, int(round(len(names) * share)))
    test_names = set(rng.permutation(names)[:n_test].tolist())
    mask = np.isin(groups, list(test_names))
    return mask, f"split by {by}: {n_test} of {len(names)} held out"


@dataclass(frozen=True)
class TrainResult:
    metadata: VersionMetadata
    report: dict
    split: str
    train_windows: int
    seconds: float


def train_from_dataset(registry: ModelRegistry, spec_dict: dict, stride: int, dataset: Dataset,
                       epochs: int = 25, seed: int = 0, int8_min_agreement: float | None = None,
                       augment_copies: int = 0) -> TrainResult:
    """Train on the dataset's training side (with ``augment_copies`` augmented copies of each window per
    epoch: ``model.train.fit``), report on its held-out side, publish the next version."""
    spec = ModelSpec.from_dict(spec_dict)
    if list(spec.channels) != dataset.channels or list(spec.classes) != dataset.classes:
        raise ValueError(f"dataset {dataset.dataset_id} was imported for channels {dataset.channels} and classes "
                         f"{dataset.classes}; the model has {list(spec.channels)} and {list(spec.classes)}")
    windows = cut_windows(dataset, spec.window, stride)
    if len(windows.y) == 0:
        raise ValueError(f"dataset {dataset.dataset_id} has no labeled window of {spec.window} samples")
    test, split = held_out(windows, seed=seed)
    X, y, Xte, yte = windows.X[~test], windows.y[~test], windows.X[test], windows.y[test]
    torch.manual_seed(seed)
    net = WindowTransformer(spec)
    net.set_normalisation(X)
    started = time.perf_counter()
    fit(net, X, y, epochs=epochs, seed=seed, augment_copies=augment_copies)
    seconds = time.perf_counter() - started
    report = class_report(yte, predict_proba(net, Xte).argmax(axis=1), spec.classes)
    recalls = [c["recall"] for c in report["per_class"].values() if c["support"]]
    metrics = {"test_accuracy": report["accuracy"], "test_macro_recall": float(np.mean(recalls)),
               "train_windows": float(len(y)), "test_windows": float(len(yte))}
    fingerprint = dataset.manifest["fingerprint"]
    note = f"trained on dataset {dataset.dataset_id} (sha256:{fingerprint}); {split}"
    if augment_copies:
        note += f"; {augment_copies} augmented copies of each window per epoch"
    meta = publish_version(registry, dataset.manifest["model_name"], net, spec, metrics, data_seen=len(y), note=note,
                           calibration=(Xte, yte), int8_min_agreement=int8_min_agreement, lda=lda_of(net, X, y))
    log.info("published %s v%d: %s", meta.model_name, meta.version, metrics)
    return TrainResult(meta, report, split, len(y), seconds)
