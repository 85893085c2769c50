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
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse


INT8_FILE = "model-int8.onnx"  # a version's quantized graph, when it has one (model.quantize)
EXTRA_NAMES = {INT8_FILE: "the INT8 graph"}  # how errors name a further file


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
    artifacts: dict[str, str] = field(default_factory=dict)  # further files (e.g. model-int8.onnx) -> sha256


@dataclass
class LoadedVersion:
    metadata: VersionMetadata
    onnx_bytes: bytes
    weights_bytes: bytes | None
    artifact_uri: str
    int8_bytes: bytes | None = None  # the version's INT8 graph, when asked for and present


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
    """Versions of named models under one root: a local folder, or an fsspec URL (``s3://bucket/registry``)
    on shared storage that every node of a cluster reads.

    Locally a version is written to a staging folder and renamed into place; on an object store its
    ``metadata.json`` is written last, and a version only counts once that file exists. Either way,
    readers never see half a version. Object-store credentials and endpoint come from the usual
    variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        text = str(root)
        self.remote = "://" in text and not text.startswith("file://")
        if self.remote:
            import fsspec

            self.url = text.rstrip("/")
            self.fs, self._base = fsspec.core.url_to_fs(self.url)
            self.root = self.url
        else:
            self.root = Path(text.removeprefix("file://"))

    def _model_dir(self, name: str):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid model name {name!r}")
        return f"{self._base}/{name}" if self.remote else self.root / name

    def version_dir(self, name: str, version: int):
        folder = self._model_dir(name)
        return f"{folder}/v{version:06d}" if self.remote else folder / f"v{version:06d}"

    def _read(self, name: str, version: int, file: str) -> bytes:
        if self.remote:
            return self.fs.cat_file(f"{self.version_dir(name, version)}/{file}")
        return (self.version_dir(name, version) / file).read_bytes()

    def versions(self, name: str) -> list[int]:
        folder = self._model_dir(name)
        if self.remote:
            try:
                found = [p for p in self.fs.glob(f"{folder}/v*/metadata.json")]
            except FileNotFoundError:
                return []
            names = [p.rstrip("/").split("/")[-2] for p in found]
            return sorted(int(n[1:]) for n in names if n[1:].isdigit())
        if not folder.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in folder.iterdir()
                      if p.name.startswith("v") and p.name[1:].isdigit() and (p / "metadata.json").is_file())

    def latest_version(self, name: str) -> int | None:
        found = self.versions(name)
        return found[-1] if found else None

    STAGE_FILE = "stage"  # in a version's folder while it is in its shadow phase ("shadow"), once it was withdrawn
    #                       from it ("withdrawn") or rolled back from ("rolled-back")

    def set_stage(self, name: str, version: int, stage: str | None) -> None:
        """Mark a version as ``shadow`` or ``withdrawn`` (never served) or ``rolled-back`` (served, then
        rolled back from), or clear the mark (it serves)."""
        path = f"{self.version_dir(name, version)}/{self.STAGE_FILE}"
        if self.remote:
            if stage is None:
                if self.fs.exists(path):
                    self.fs.rm_file(path)
            else:
                self.fs.pipe_file(path, stage.encode())
            return
        if stage is None:
            Path(path).unlink(missing_ok=True)
        else:
            Path(path).write_text(stage)

    def stage(self, name: str, version: int) -> str | None:
        try:
            return self._read(name, version, self.STAGE_FILE).decode().strip() or None
        except (OSError, FileNotFoundError):
            return None

    def servable_newest_first(self, name: str) -> Iterator[int]:
        """The versions that may serve, newest first: all but those in their shadow phase, withdrawn from it
        or rolled back from (so a fresh start serves what was in service, not a version taken out of it).
        Lazy: a start that takes the newest reads one stage file, not one per version.

        >>> import tempfile
        >>> reg = ModelRegistry(tempfile.mkdtemp())
        >>> for _ in range(3):
        ...     _ = reg.publish("m", b"onnx", b"w", {"window": 4})
        >>> reg.set_stage("m", 3, "withdrawn")
        >>> list(reg.servable_newest_first("m")), reg.latest_servable("m")
        ([2, 1], 2)
        """
        return (v for v in reversed(self.versions(name)) if self.stage(name, v) is None)

    def latest_servable(self, name: str) -> int | None:
        return next(self.servable_newest_first(name), None)

    def prune_withdrawn(self, name: str, keep: int) -> list[int]:
        """Delete withdrawn versions (never served) but the newest ``keep`` of them; returns those deleted.
        A served version is never deleted, nor one still in its shadow phase."""
        withdrawn = [v for v in self.versions(name) if self.stage(name, v) == "withdrawn"]
        doomed = withdrawn[:max(0, len(withdrawn) - keep)]
        for version in doomed:
            folder = self.version_dir(name, version)
            if self.remote:
                self.fs.rm(f"{folder}/metadata.json")  # first: from now on the version does not exist
                self.fs.rm(folder, recursive=True)
            else:
                (folder / "metadata.json").unlink()
                shutil.rmtree(folder)
        return doomed

    def artifact_uri(self, name: str, version: int) -> str:
        if self.remote:
            return f"{self.url}/{name}/v{version:06d}/model.onnx"
        return (self.version_dir(name, version) / "model.onnx").resolve().as_uri()

    def metadata(self, name: str, version: int) -> VersionMetadata:
        try:
            return VersionMetadata(**json.loads(self._read(name, version, "metadata.json")))
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
                data_seen: int = 0, note: str = "", extra: dict[str, bytes] | None = None) -> VersionMetadata:
        """Write a new version (the next number) and return its metadata; ``extra`` files (such as
        ``model-int8.onnx``) are stored beside the model with their sha256 in the metadata."""
        extra = dict(extra or {})
        for file in extra:
            if file in ("model.onnx", "weights.pt", "metadata.json", ".claim") or "/" in file:
                raise ValueError(f"extra artifact name {file!r} is reserved or not a plain file name")

        def metadata_for(version: int) -> VersionMetadata:
            return VersionMetadata(name, version, sha256_hex(onnx_bytes), sha256_hex(weights_bytes), spec,
                                   dict(metrics or {}), parent_version, data_seen, int(time.time() * 1000), note,
                                   {file: sha256_hex(data) for file, data in extra.items()})

        if self.remote:
            return self._publish_remote(name, onnx_bytes, weights_bytes, metadata_for, extra)
        folder = self._model_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        try:
            (staging / "model.onnx").write_bytes(onnx_bytes)
            (staging / "weights.pt").write_bytes(weights_bytes)
            for file, data in extra.items():
                (staging / file).write_bytes(data)
            while True:
                meta = metadata_for((self.latest_version(name) or 0) + 1)
                (staging / "metadata.json").write_text(json.dumps(asdict(meta), indent=2))
                try:
                    os.rename(staging, self.version_dir(name, meta.version))
                    return meta
                except OSError:
                    if not self.version_dir(name, meta.version).exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _publish_remote(self, name: str, onnx_bytes: bytes, weights_bytes: bytes, metadata_for,
                        extra: dict[str, bytes]) -> VersionMetadata:
        """Claim the number with an exclusive create of ``.claim`` (S3's ``If-None-Match: *``), so two
        publishers never take the same one, whatever their view of the listing; then the artifacts,
        ``metadata.json`` last: the version exists once that file does."""
        version = self.latest_version(name) or 0
        while True:
            version += 1
            folder = self.version_dir(name, version)
            try:
                self.fs.pipe_file(f"{folder}/.claim", uuid.uuid4().hex.encode(), mode="create")
            except FileExistsError:
                continue  # another writer took this number
            meta = metadata_for(version)
            self.fs.pipe_file(f"{folder}/model.onnx", onnx_bytes)
            self.fs.pipe_file(f"{folder}/weights.pt", weights_bytes)
            for file, data in extra.items():
                self.fs.pipe_file(f"{folder}/{file}", data)
            self.fs.pipe_file(f"{folder}/metadata.json", json.dumps(asdict(meta), indent=2).encode())
            return meta

    def announcement(self, name: str, version: int) -> dict[str, Any]:
        """What a ``model-snapshots`` message says about a stored version."""
        meta = self.metadata(name, version)
        out = {"model_name": name, "version": version, "artifact_uri": self.artifact_uri(name, version),
               "sha256": meta.sha256, "metrics": meta.metrics, "parent_version": meta.parent_version,
               "created_at": meta.created_at}
        if INT8_FILE in meta.artifacts:
            out["int8_sha256"] = meta.artifacts[INT8_FILE]
        return out

    def extra_artifact(self, name: str, version: int, file: str,
                       meta: VersionMetadata | None = None) -> bytes | None:
        """A version's further file (``artifacts`` in its metadata), verified; ``None`` when it has none."""
        meta = meta or self.metadata(name, version)
        if file not in meta.artifacts:
            return None
        what = EXTRA_NAMES.get(file, file)
        try:
            data = self._read(name, version, file)
        except (OSError, FileNotFoundError) as exc:
            raise ArtifactError(f"{what} of {name} v{version} is unreadable: {exc}") from None
        if sha256_hex(data) != meta.artifacts[file]:
            raise ArtifactError(f"{what} of {name} v{version} does not match its sha256")
        return data

    def load(self, name: str, version: int | None = None, int8: bool = False) -> LoadedVersion:
        """Load a version (latest by default), verifying every checksum; with ``int8``, its INT8 graph
        too where it has one."""
        version = version if version is not None else self.latest_version(name)
        if version is None:
            raise ArtifactError(f"no version of model {name!r} in {self.root}")
        meta = self.metadata(name, version)
        uri = self.artifact_uri(name, version)
        onnx_bytes = load_verified(uri, meta.sha256)
        try:
            weights = self._read(name, version, "weights.pt")
        except (OSError, FileNotFoundError):
            weights = None
        if weights is not None and sha256_hex(weights) != meta.weights_sha256:
            raise ArtifactError(f"weights of {name} v{version} do not match their sha256")
        int8_bytes = self.extra_artifact(name, version, INT8_FILE, meta) if int8 else None
        return LoadedVersion(meta, onnx_bytes, weights, uri, int8_bytes)
