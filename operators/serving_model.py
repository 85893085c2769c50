"""Loading a model version for serving: verify its checksum, build a runner, smoke-test it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from model.registry import ArtifactError, LoadedVersion, ModelRegistry
from model.runtime import OnnxRunner, Runner, TorchRunner
from model.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class ServingModel:
    """A runner together with what predictions must say about it."""

    name: str
    version: int
    spec: ModelSpec
    runner: Runner

    @property
    def provider(self) -> str:
        return self.runner.provider


def smoke_test(runner: Runner, spec: ModelSpec) -> None:
    """Run one tiny batch; refuse a model whose output is not a probability per class."""
    probs = runner.predict_proba(np.zeros((2, spec.window, spec.n_channels), np.float32))
    if probs.shape != (2, spec.n_classes):
        raise ArtifactError(f"smoke inference returned shape {probs.shape}, expected (2, {spec.n_classes})")
    if not np.all(np.isfinite(probs)) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ArtifactError("smoke inference did not return finite probabilities")


def build_serving_model(loaded: LoadedVersion, runtime: str = "onnx", device: str = "auto",
                        threads: int = 0) -> ServingModel:
    """Make a verified, smoke-tested serving model from a loaded registry version."""
    spec = ModelSpec.from_dict(loaded.metadata.spec)
    try:
        if runtime == "onnx":
            runner: Runner = OnnxRunner(loaded.onnx_bytes, prefer=device, threads=threads, spin=threads == 0)
        else:
            from model.train import load_network

            if loaded.weights_bytes is None:
                raise ArtifactError("torch runtime needs weights.pt, which this version lacks")
            torch_device = "cuda" if device == "cuda" else "cpu"
            runner = TorchRunner(load_network(spec, loaded.weights_bytes), torch_device)
    except ArtifactError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
        raise ArtifactError(f"cannot load {loaded.metadata.model_name} v{loaded.metadata.version}: {exc}") from None
    smoke_test(runner, spec)
    return ServingModel(loaded.metadata.model_name, loaded.metadata.version, spec, runner)


def load_from_registry(root: str, name: str, version: int | None = None, runtime: str = "onnx",
                       device: str = "auto", threads: int = 0) -> ServingModel:
    """Load, verify and smoke-test a registry version; ``threads`` > 0 pins ONNX Runtime's
    intra-op threads (and turns spinning off), 0 keeps its defaults."""
    model = build_serving_model(ModelRegistry(root).load(name, version), runtime, device, threads)
    log.info("serving %s v%d on %s", model.name, model.version, model.provider)
    return model
