"""Model registry: a directory of immutable versions, each with ONNX, weights and metadata.

Layout: ``<root>/<model name>/v000001/{model.onnx, weights.pt, metadata.json}``. A version
is written to a temporary folder and renamed into place, so readers never see half of one.

>>> import tempfile
>>> reg = ModelRegistry(tempfile.mkdtemp())
>>> meta = reg.publish("m", b"onnx-bytes", b"weights", {"window": 4}, metrics={"accuracy": 0.9})
>>> meta.version, reg.latest_version("m"), reg.load("m", 1).onnx_bytes
(1, 1, b'onnx-bytes')
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class ArtifactError(RuntimeError):
    """A model artifact that is missing, corrupt or does not match its checksum."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class VersionMetadata:
    model_name: str
    version: int
    sha256: str
    weights_sha256: str
    spec: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    parent_version: int | None = None
    data_seen: int = 0
    created_at: int = 0
    note: str = ""


@dataclass
class LoadedVersion:
    metadata: VersionMetadata
    onnx_bytes: bytes
    weights_bytes: bytes | None
    artifact_uri: str


def read_artifact(uri: str) -> bytes:
    """Read an artifact from a local path, ``file://`` URL or any fsspec URL."""
    parsed = urlparse(uri)
    try:
        if parsed.scheme in ("", "file"):
            return Path(parsed.path if parsed.scheme else uri).read_bytes()
        import fsspec

        with fsspec.open(uri, "rb") as fh:
            return fh.read()
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read artifact {uri}: {exc}") from None


def load_verified(uri: str, expected_sha256: str) -> bytes:
    """Read an artifact and refuse it unless its sha256 matches."""
    data = read_artifact(uri)
    actual = sha256_hex(data)
    if actual != expected_sha256:
        raise ArtifactError(f"sha256 mismatch for {uri}: expected {expected_sha256}, got {actual}")
    return data


class ModelRegistry:
    """Versions of named models under one root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _model_dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid model name {name!r}")
        return self.root / name

    def version_dir(self, name: str, version: int) -> Path:
        return self._model_dir(name) / f"v{version:06d}"

    def versions(self, name: str) -> list[int]:
        folder = self._model_dir(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in folder.iterdir()
                      if p.name.startswith("v") and p.name[1:].isdigit() and (p / "metadata.json").is_file())

    def latest_version(self, name: str) -> int | None:
        found = self.versions(name)
        return found[-1] if found else None

    def artifact_uri(self, name: str, version: int) -> str:
        return (self.version_dir(name, version) / "model.onnx").resolve().as_uri()

    def metadata(self, name: str, version: int) -> VersionMetadata:
        path = self.version_dir(name, version) / "metadata.json"
        try:
            return VersionMetadata(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ArtifactError(f"metadata of {name} v{version} unreadable: {exc}") from None

    def latest_metadata(self, name: str) -> VersionMetadata:
        """Metadata of the newest version; a clear error when the model has none."""
        version = self.latest_version(name)
        if version is None:
            raise ArtifactError(f"no version of model {name!r} in {self.root} (run `sensorloop setup`)")
        return self.metadata(name, version)

    def publish(self, name: str, onnx_bytes: bytes, weights_bytes: bytes, spec: dict[str, Any],
                metrics: dict[str, float] | None = None, parent_version: int | None = None,
                data_seen: int = 0, note: str = "") -> VersionMetadata:
        """Write a new version (the next number) atomically and return its metadata."""
        folder = self._model_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        try:
            (staging / "model.onnx").write_bytes(onnx_bytes)
            (staging / "weights.pt").write_bytes(weights_bytes)
            while True:
                version = (self.latest_version(name) or 0) + 1
                meta = VersionMetadata(name, version, sha256_hex(onnx_bytes), sha256_hex(weights_bytes),
                                       spec, dict(metrics or {}), parent_version, data_seen,
                                       int(time.time() * 1000), note)
                (staging / "metadata.json").write_text(json.dumps(asdict(meta), indent=2))
                try:
                    os.rename(staging, self.version_dir(name, version))
                    return meta
                except OSError:
                    if not self.version_dir(name, version).exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def announcement(self, name: str, version: int) -> dict[str, Any]:
        """What a ``model-snapshots`` message says about a stored version."""
        meta = self.metadata(name, version)
        return {"model_name": name, "version": version, "artifact_uri": self.artifact_uri(name, version),
                "sha256": meta.sha256, "metrics": meta.metrics, "parent_version": meta.parent_version,
                "created_at": meta.created_at}

    def load(self, name: str, version: int | None = None) -> LoadedVersion:
        """Load a version (latest by default), verifying both checksums."""
        version = version if version is not None else self.latest_version(name)
        if version is None:
            raise ArtifactError(f"no version of model {name!r} in {self.root}")
        meta = self.metadata(name, version)
        uri = self.artifact_uri(name, version)
        onnx_bytes = load_verified(uri, meta.sha256)
        weights_path = self.version_dir(name, version) / "weights.pt"
        weights = weights_path.read_bytes() if weights_path.exists() else None
        if weights is not None and sha256_hex(weights) != meta.weights_sha256:
            raise ArtifactError(f"weights of {name} v{version} do not match their sha256")
        return LoadedVersion(meta, onnx_bytes, weights, uri)
