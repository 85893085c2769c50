"""Signed model announcements: the publishing side holds an Ed25519 private key, serving only the
public one, so whoever can write to ``model-snapshots`` but lacks the key cannot make serving load
anything, not even a registry version (say, an old, bad one) nobody chose to announce.

>>> import dataclasses, os, tempfile
>>> folder = tempfile.mkdtemp()
>>> private, public = generate_keys(os.path.join(folder, "announce.key"), os.path.join(folder, "announce.pub"))
>>> snapshot = ModelSnapshot("m", 2, "file:///r/m/v000002/model.onnx", "0" * 64)
>>> signed = AnnouncementSigner.load(private).sign(snapshot)
>>> verifier = AnnouncementVerifier.load(public)
>>> verifier.refusal(signed) is None
True
>>> verifier.refusal(snapshot)
'unsigned announcement (serving accepts only signed ones: registry.verify_key is set)'
>>> verifier.refusal(dataclasses.replace(signed, version=3))
'its signature does not match (not signed by the publishing key, or altered on the way)'
>>> verifier.refusal(ModelSnapshot.decode(signed.encode())) is None   # survives the topic
True
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
from pathlib import Path

from schemas import ModelSnapshot


def canonical_bytes(snapshot: ModelSnapshot) -> bytes:
    """What is signed: every field but the signature, keys sorted, compact."""
    body = {k: v for k, v in snapshot.to_dict().items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def generate_keys(private_path: str, public_path: str) -> tuple[str, str]:
    """Write a new Ed25519 key pair as PEM files (the private one readable by its owner only)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    for path in (private_path, public_path):
        if Path(path).exists():
            raise FileExistsError(f"{path} exists; remove it first to make a new key pair")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    Path(public_path).write_bytes(public_pem)
    return private_path, public_path


class AnnouncementSigner:
    """Signs announcements with the publishing side's private key."""

    def __init__(self, private_key) -> None:
        self.key = private_key

    @classmethod
    def load(cls, path: str) -> "AnnouncementSigner":
        from cryptography.hazmat.primitives import serialization

        return cls(serialization.load_pem_private_key(Path(path).read_bytes(), password=None))

    def sign(self, snapshot: ModelSnapshot) -> ModelSnapshot:
        signature = base64.b64encode(self.key.sign(canonical_bytes(snapshot))).decode()
        return dataclasses.replace(snapshot, signature=signature)


class AnnouncementVerifier:
    """Checks announcements against the publishing side's public key."""

    def __init__(self, public_key) -> None:
        self.key = public_key

    @classmethod
    def load(cls, path: str) -> "AnnouncementVerifier":
        from cryptography.hazmat.primitives import serialization

        return cls(serialization.load_pem_public_key(Path(path).read_bytes()))

    def refusal(self, snapshot: ModelSnapshot) -> str | None:
        """None for a good signature, else why the announcement is refused."""
        from cryptography.exceptions import InvalidSignature

        if not snapshot.signature:
            return "unsigned announcement (serving accepts only signed ones: registry.verify_key is set)"
        try:
            self.key.verify(base64.b64decode(snapshot.signature, validate=True), canonical_bytes(snapshot))
        except (InvalidSignature, binascii.Error, ValueError):
            return "its signature does not match (not signed by the publishing key, or altered on the way)"
        return None


def announcement(registry, model_name: str, version: int, signing_key: str = "",
                 stage: str | None = None) -> ModelSnapshot:
    """The ``model-snapshots`` message for a registry version (``stage``: ``ModelSnapshot.stage``), signed
    when ``signing_key`` names the publishing side's private key file (the stage is signed too)."""
    snapshot = ModelSnapshot.from_dict({**registry.announcement(model_name, version), "stage": stage})
    return AnnouncementSigner.load(signing_key).sign(snapshot) if signing_key else snapshot
