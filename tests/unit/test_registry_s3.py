"""The model registry on S3-compatible shared storage (moto's S3 server on loopback), as a cluster uses it."""

from __future__ import annotations

import pytest

pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed")
moto_server = pytest.importorskip("moto.server", reason="moto[server] (test extra) is not installed")

from infra.broker import free_port  # noqa: E402
from model.registry import ArtifactError, ModelRegistry  # noqa: E402
from operators.serving_model import load_snapshot  # noqa: E402
from schemas import ModelSnapshot  # noqa: E402


@pytest.fixture
def s3_url(monkeypatch):
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    import boto3
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # filesystems are cached per arguments, not per endpoint
    boto3.client("s3").create_bucket(Bucket="sensorloop")
    yield "s3://sensorloop/registry"
    server.stop()


def test_publish_list_load_and_serve_from_s3(s3_url, trained_registry):
    local = ModelRegistry(trained_registry).load("basic-motions", 1)
    registry = ModelRegistry(s3_url)
    assert registry.versions("basic-motions") == []
    with pytest.raises(ArtifactError, match="no version"):
        registry.latest_metadata("basic-motions")
    first = registry.publish("basic-motions", local.onnx_bytes, local.weights_bytes, local.metadata.spec,
                             {"test_accuracy": 0.9})
    second = registry.publish("basic-motions", local.onnx_bytes, local.weights_bytes, local.metadata.spec,
                              {"holdout_accuracy": 0.95}, parent_version=1)
    assert (first.version, second.version) == (1, 2)
    fresh = ModelRegistry(s3_url)  # another node sees the same versions
    assert fresh.versions("basic-motions") == [1, 2]
    assert fresh.metadata("basic-motions", 2).parent_version == 1
    loaded = fresh.load("basic-motions")
    assert loaded.metadata.version == 2 and loaded.onnx_bytes == local.onnx_bytes
    assert loaded.artifact_uri == "s3://sensorloop/registry/basic-motions/v000002/model.onnx"

    # Serving loads an announced version straight from the object store, checksum verified.
    model = load_snapshot(ModelSnapshot.from_dict(fresh.announcement("basic-motions", 2)))
    assert model.version == 2

    # A corrupted object is refused, not served.
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.pipe_file("sensorloop/registry/basic-motions/v000002/model.onnx", local.onnx_bytes[:500])
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_snapshot(ModelSnapshot.from_dict(fresh.announcement("basic-motions", 2)))


def test_a_version_without_metadata_does_not_count(s3_url):
    import fsspec

    fsspec.filesystem("s3").pipe_file("sensorloop/registry/m/v000001/model.onnx", b"half a version")
    registry = ModelRegistry(s3_url)
    assert registry.versions("m") == []
    meta = registry.publish("m", b"onnx", b"weights", {"window": 4})
    assert meta.version == 1 and registry.load("m", 1).onnx_bytes == b"onnx"


def test_publishers_with_a_stale_view_never_share_a_version_number(s3_url, monkeypatch):
    """Two learning jobs publish at once: the second read the listing (s3fs caches it) before the first's
    version landed. Each must get its own number, and neither may overwrite the other's artifacts."""
    first, second = ModelRegistry(s3_url), ModelRegistry(s3_url)
    assert first.publish("race", b"onnx-a", b"weights-a", {"window": 4}).version == 1
    monkeypatch.setattr(second, "latest_version", lambda name: None)  # its listing predates v1
    monkeypatch.setattr(second.fs, "exists", lambda path, **kw: False)
    meta = second.publish("race", b"onnx-b", b"weights-b", {"window": 4})
    fresh = ModelRegistry(s3_url)
    assert meta.version == 2 and fresh.versions("race") == [1, 2]
    assert fresh.load("race", 1).onnx_bytes == b"onnx-a" and fresh.load("race", 2).onnx_bytes == b"onnx-b"
