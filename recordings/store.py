"""Imported recordings on disk: one folder per dataset, one set of flat binary files per device,
written chunk by chunk (memory stays flat however large the file) and made visible atomically.

>>> import tempfile, numpy as np
>>> store = DatasetStore(tempfile.mkdtemp())
>>> writer = store.writer("d1", "toy", ("x", "y"), ("a", "b"), 10.0)
>>> writer.append("dev", np.array([0, 100, 200]), np.ones((3, 2), np.float32), np.array([0, 0, 1]))
>>> manifest = writer.commit({"rows_read": 3})
>>> data = store.load("d1")
>>> data.devices["dev"].values.shape, data.devices["dev"].labels.tolist(), store.list()
((3, 2), [0, 0, 1], ['d1'])
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
UNLABELED = -1


@dataclass(frozen=True)
class DeviceSeries:
    """One device's samples: ``ts`` (ms), ``values`` [n, channels], ``labels`` (class index, -1: none)."""

    ts: np.ndarray
    values: np.ndarray
    labels: np.ndarray

    def segments(self, max_gap_ms: float) -> list[slice]:
        """Runs of samples without a gap longer than ``max_gap_ms`` (each run is one recording)."""
        if len(self.ts) == 0:
            return []
        breaks = np.flatnonzero(np.diff(self.ts) > max_gap_ms) + 1
        edges = [0, *breaks.tolist(), len(self.ts)]
        return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


@dataclass(frozen=True)
class Dataset:
    dataset_id: str
    manifest: dict
    devices: dict[str, DeviceSeries]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def channels(self) -> list[str]:
        return list(self.manifest["channels"])


class DatasetWriter:
    """Appends samples per device to files in a hidden folder; ``commit`` makes the dataset appear."""

    def __init__(self, final: Path, model_name: str, channels: tuple[str, ...], classes: tuple[str, ...],
                 sample_rate_hz: float) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.name}.importing-{time.time_ns()}")
        self.tmp.mkdir(parents=True)
        self.header = {"dataset_id": final.name, "model_name": model_name, "channels": list(channels),
                       "classes": list(classes), "sample_rate_hz": sample_rate_hz}
        self.n_channels = len(channels)
        self.files: dict[str, dict] = {}
        self.digest = hashlib.sha256()
        self.counts = np.zeros(len(classes), np.int64)

    def _files(self, device: str) -> dict:
        if device not in self.files:
            folder = self.tmp / f"device-{len(self.files):05d}"
            folder.mkdir()
            self.files[device] = {"folder": folder.name, "samples": 0,
                                  "handles": [open(folder / name, "wb") for name in ("ts.i64", "values.f32",
                                                                                       "labels.i16")]}
        return self.files[device]

    def append(self, device: str, ts: np.ndarray, values: np.ndarray, labels: np.ndarray) -> None:
        entry = self._files(device)
        parts = (np.asarray(ts, np.int64), np.asarray(values, np.float32).reshape(-1, self.n_channels),
                 np.asarray(labels, np.int16))
        for handle, part in zip(entry["handles"], parts):
            raw = np.ascontiguousarray(part).tobytes()
            handle.write(raw)
            self.digest.update(raw)
        self.digest.update(device.encode())
        entry["samples"] += len(parts[0])
        known = parts[2][parts[2] >= 0]
        self.counts += np.bincount(known, minlength=len(self.counts))[:len(self.counts)]

    def commit(self, report: dict) -> dict:
        for entry in self.files.values():
            for handle in entry.pop("handles"):
                handle.close()
        manifest = {**self.header, "fingerprint": self.digest.hexdigest(), "created_at": int(time.time() * 1000),
                    "devices": {d: {"folder": e["folder"], "samples": e["samples"]} for d, e in self.files.items()},
                    "samples_per_class": dict(zip(self.header["classes"], self.counts.tolist())), "report": report}
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if self.final.exists():
            raise FileExistsError(f"dataset {self.final.name} appeared meanwhile")
        self.tmp.rename(self.final)  # atomic: the dataset is there whole or not at all
        return manifest

    def abort(self) -> None:
        for entry in self.files.values():
            for handle in entry.get("handles", []):
                handle.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class DatasetStore:
    """Datasets under ``root`` (``data.dir``), named by id."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def writer(self, dataset_id: str, model_name: str, channels: tuple[str, ...], classes: tuple[str, ...],
               sample_rate_hz: float) -> DatasetWriter:
        if not DATASET_ID.fullmatch(dataset_id):
            raise ValueError(f"dataset id {dataset_id!r}: letters, digits, '.', '_' and '-' only")
        final = self.root / dataset_id
        if final.exists():
            raise FileExistsError(f"dataset {dataset_id} exists ({final}); pick another --dataset id")
        return DatasetWriter(final, model_name, channels, classes, sample_rate_hz)

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "manifest.json").is_file())

    def manifest(self, dataset_id: str) -> dict:
        path = self.root / dataset_id / "manifest.json"
        if not path.is_file():
            known = ", ".join(self.list()) or "none"
            raise FileNotFoundError(f"no dataset {dataset_id!r} under {self.root} (datasets: {known})")
        return json.loads(path.read_text())

    def load(self, dataset_id: str) -> Dataset:
        """The dataset, its arrays memory-mapped (nothing is read until used)."""
        manifest = self.manifest(dataset_id)
        n_channels = len(manifest["channels"])
        devices = {}
        for device, entry in manifest["devices"].items():
            folder = self.root / dataset_id / entry["folder"]
            n = entry["samples"]
            devices[device] = DeviceSeries(
                np.memmap(folder / "ts.i64", np.int64, "r", shape=(n,)) if n else np.zeros(0, np.int64),
                np.memmap(folder / "values.f32", np.float32, "r", shape=(n, n_channels)) if n
                else np.zeros((0, n_channels), np.float32),
                np.memmap(folder / "labels.i16", np.int16, "r", shape=(n,)) if n else np.zeros(0, np.int16))
        return Dataset(dataset_id, manifest, devices)


class DatasetStream:
    """An imported dataset replayed as devices: round-robin over its devices, each playing its samples
    in order and starting over at the end; the ground truth rides along as ``label`` where known.

    >>> import tempfile, numpy as np
    >>> store = DatasetStore(tempfile.mkdtemp())
    >>> w = store.writer("d", "m", ("x",), ("a", "b"), 10.0)
    >>> w.append("p1", np.array([0, 100]), np.array([[1.0], [2.0]], np.float32), np.array([0, -1]))
    >>> w.append("p2", np.array([0]), np.array([[5.0]], np.float32), np.array([1]))
    >>> _ = w.commit({})
    >>> stream = DatasetStream(store.load("d"))
    >>> [(r["device_id"], r["seq"], r["values"], r.get("label")) for r in (next(stream) for _ in range(4))]
    [('p1', 0, [1.0], 'a'), ('p2', 0, [5.0], 'b'), ('p1', 1, [2.0], None), ('p2', 1, [5.0], 'b')]
    """

    def __init__(self, dataset: Dataset) -> None:
        self.devices = [(name, series) for name, series in dataset.devices.items() if len(series.ts)]
        if not self.devices:
            raise ValueError(f"dataset {dataset.dataset_id} has no samples")
        self.classes = dataset.classes
        self.position = [0] * len(self.devices)
        self.seq = [0] * len(self.devices)
        self.emitted = 0

    def __iter__(self) -> "DatasetStream":
        return self

    def __next__(self) -> dict:
        k = self.emitted % len(self.devices)
        name, series = self.devices[k]
        i = self.position[k]
        reading = {"device_id": name, "seq": self.seq[k],
                   "values": [round(float(v), 6) for v in series.values[i]]}
        if series.labels[i] >= 0:
            reading["label"] = self.classes[int(series.labels[i])]
        self.position[k] = (i + 1) % len(series.ts)
        self.seq[k] += 1
        self.emitted += 1
        return reading
