"""Loading a model version for serving: verify its checksum, build a runner, smoke-test it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial

import numpy as np

from model.registry import (
    INT8_FILE,
    ArtifactError,
    LoadedVersion,
    ModelRegistry,
    VersionMetadata,
    load_verified,
    read_artifact,
)
from model.calibration import class_bias_of
from model.runtime import OnnxRunner, Runner, TorchRunner
from model.spec import ModelSpec, output_names
from operators.device_normalisation import adapt
from operators.python_thread import on_python_thread

log = logging.getLogger(__name__)


@dataclass
class ServingModel:
    """A runner together with what predictions must say about it."""

    name: str
    version: int
    spec: ModelSpec
    runner: Runner
    precision: str = "fp32"  # "int8" when the version's quantized graph serves
    reference_of: Callable[[], np.ndarray | None] | None = None  # reads input_reference when first needed

    @cached_property
    def input_reference(self) -> np.ndarray | None:
        """``[[means], [deviations]]`` the model normalises its input by (None: unknown, e.g. a cold start's
        version 0: windows are served as sent); read once, and only when per-device normalisation asks."""
        return self.reference_of() if self.reference_of is not None else None

    def adapt(self, windows: list) -> int:
        """Re-express, in place, the windows that carry their device's input statistics
        (``serving.device_normalisation_windows``) with this model's input mean and deviation; each is
        adapted once (its statistics are dropped). Returns how many carried statistics this model could
        not use (it has no input reference): those are served as sent."""
        ref, unused = self.input_reference, 0
        for window in windows:
            if window.device_stats is None:
                continue
            if ref is None:
                unused += 1
                continue
            window.values = adapt(window.values, window.device_stats, ref[0], ref[1])
            window.device_stats = None
        return unused

    @property
    def provider(self) -> str:
        return self.runner.provider if self.precision == "fp32" else f"{self.runner.provider} ({self.precision})"


@dataclass
class ControlMessage:
    """A ``ModelSnapshot`` or ``DriftEvent`` addressed to one inference shard, with where it was read."""

    shard: int
    message: object
    partition: int
    offset: int


class FixedRunner:
    """A runner that gives every window the same probabilities (documentation examples and tests)."""

    provider = "fixed"

    def __init__(self, probabilities: tuple[float, ...]) -> None:
        self.probabilities = np.asarray(probabilities, np.float32)

    def predict_proba(self, windows: np.ndarray) -> np.ndarray:
        return np.tile(self.probabilities, (len(windows), 1))

    def predict(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        return {"probabilities": self.predict_proba(windows)}


def fixed_model(name: str, version: int, probabilities: tuple[float, ...] = (0.9, 0.1)) -> ServingModel:
    """A serving model of 2 channels, window 4 and classes a, b that always answers ``probabilities``."""
    spec = ModelSpec(window=4, channels=("x", "y"), classes=("a", "b"))
    return ServingModel(name, version, spec, FixedRunner(probabilities))


class SilentRunner:
    """The runner of a model that does not classify before its first version: no outputs (its windows still
    go to the learning side, which learns its first version from them)."""

    provider = "none"

    def predict(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        return {}


def untrained_model(name: str, spec: ModelSpec) -> ServingModel:
    """Version 0 of a declared model with no trained version yet (cold start): every class equally
    likely, so every window is unsure and goes to review within the budget.

    >>> m = untrained_model("m", ModelSpec(window=4, channels=("x",), classes=("a", "b", "c", "d")))
    >>> m.version, m.runner.predict_proba(np.zeros((1, 4, 1), np.float32)).tolist()
    (0, [[0.25, 0.25, 0.25, 0.25]])
    """
    if not spec.has("classify"):
        return ServingModel(name, 0, spec, SilentRunner())
    return ServingModel(name, 0, spec, FixedRunner(tuple([1.0 / spec.n_classes] * spec.n_classes)))


def serving_spec(root: str, name: str, version: int | None = None, declared: dict | None = None) -> ModelSpec:
    """The spec (window, channels, classes) of the version serving starts with: ``version`` when
    pinned, else the newest; with no version at all, the ``declared`` model's (cold start)."""
    registry = ModelRegistry(root)
    if not version and declared is not None and registry.latest_version(name) is None:
        return ModelSpec.from_dict(declared)
    newest = version or registry.latest_servable(name) or registry.latest_version(name)
    if newest is None:
        raise ArtifactError(f"no version of model {name!r} in {registry.root}")
    meta = registry.metadata(name, newest)
    return ModelSpec.from_dict(meta.spec)


def smoke_test(runner: Runner, spec: ModelSpec) -> None:
    """Run one tiny batch; refuse a model whose output is not a probability per class, or that lacks a head
    of its tasks (a finite anomaly score per window, a forecast of ``horizon`` samples per channel).
    Serving needs a classify or an anomaly head (a forecast alone says nothing about the window itself)."""
    windows = np.zeros((2, spec.window, spec.n_channels), np.float32)
    if not spec.has("classify") and not spec.has("anomaly"):
        raise ArtifactError(f"serving needs a classify or an anomaly head; this model has only {', '.join(spec.tasks)}")
    if spec.tasks != ("classify",):
        outputs = runner.predict(windows)
        missing = [name for name in output_names(spec) if name not in outputs]
        if missing:
            raise ArtifactError(f"the model's graph lacks the output(s) {missing} of its tasks {list(spec.tasks)}")
        if spec.has("anomaly") and (outputs["anomaly"].shape != (2,) or not np.isfinite(outputs["anomaly"]).all()):
            raise ArtifactError(f"smoke inference gave anomaly scores of shape {outputs['anomaly'].shape}, expected "
                                "(2,) finite")
        if spec.has("forecast") and outputs["forecast"].shape != (2, spec.horizon, spec.n_channels):
            raise ArtifactError(f"smoke inference gave a forecast of shape {outputs['forecast'].shape}, expected "
                                f"(2, {spec.horizon}, {spec.n_channels})")
    if not spec.has("classify"):
        return
    probs = runner.predict_proba(windows)
    if probs.shape != (2, spec.n_classes):
        raise ArtifactError(f"smoke inference returned shape {probs.shape}, expected (2, {spec.n_classes})")
    if not np.all(np.isfinite(probs)) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ArtifactError("smoke inference did not return finite probabilities")


def build_serving_model(loaded: LoadedVersion, runtime: str = "onnx", device: str = "auto",
                        threads: int = 0, precision: str = "fp32") -> ServingModel:
    """Make a verified, smoke-tested serving model from a loaded registry version. ``precision="int8"``
    serves the version's INT8 graph; a version without one (not asked for when it was published, or
    refused by the agreement check) serves FP32, and the log says so."""
    spec = ModelSpec.from_dict(loaded.metadata.spec)
    meta = loaded.metadata
    serve_int8 = precision == "int8" and runtime == "onnx" and loaded.int8_bytes is not None
    if precision == "int8" and not serve_int8:
        why = ("the torch runtime serves the weights" if runtime != "onnx" else
               "its announcement names none" if INT8_FILE in meta.artifacts else
               f"INT8 agreement {meta.metrics['int8_agreement']:.3f} was below the minimum when it was published"
               if "int8_agreement" in meta.metrics else
               "no INT8 graph could be made when it was published" if "int8_failed" in meta.metrics
               else "it was published without one")
        log.warning("%s v%d has no INT8 graph to serve (%s): serving FP32", meta.model_name, meta.version, why)
    try:
        if runtime == "onnx":
            graph = loaded.int8_bytes if serve_int8 else loaded.onnx_bytes
            runner: Runner = OnnxRunner(graph, prefer=device, threads=threads, spin=threads == 0)
        else:
            from model.train import load_network

            if loaded.weights_bytes is None:
                raise ArtifactError("torch runtime needs weights.pt, which this version lacks")
            torch_device = "cuda" if device == "cuda" else "cpu"
            runner = TorchRunner(load_network(spec, loaded.weights_bytes), torch_device,
                                 loaded.metadata.metrics.get("temperature", 1.0),
                                 class_bias_of(loaded.metadata.metrics, spec.n_classes))
    except ArtifactError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
        raise ArtifactError(f"cannot load {loaded.metadata.model_name} v{loaded.metadata.version}: {exc}") from None
    smoke_test(runner, spec)
    reference_of = (partial(input_reference, loaded.onnx_bytes, spec.n_channels) if runtime == "onnx"  # ~40 ms
                    else partial(weights_reference, runner.net))
    return ServingModel(meta.model_name, meta.version, spec, runner, "int8" if serve_int8 else "fp32", reference_of)


def weights_reference(net) -> np.ndarray:
    """The input mean and deviation ``[[means], [deviations]]`` a network normalises by."""
    return np.stack([net.mean.cpu().numpy(), net.std.cpu().numpy()]).astype(np.float32)


def input_reference(onnx_bytes: bytes, n_channels: int) -> np.ndarray | None:
    """The per-channel input mean and deviation ``[[means], [deviations]]`` an exported network normalises
    by (its ``mean`` and ``std`` initializers), or None when the graph has none of that shape. ``onnx`` is
    called on a Python thread of its own (``operators.python_thread``: on a Flink task thread it can abort)."""
    found = on_python_thread(_normalising_initializers, onnx_bytes, n_channels)
    if set(found) != {"mean", "std"}:
        return None
    return np.stack([found["mean"], found["std"]]).astype(np.float32)


def _normalising_initializers(onnx_bytes: bytes, n_channels: int) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    found = {}
    for tensor in onnx.load_from_string(onnx_bytes).graph.initializer:
        name = tensor.name.rsplit(".", 1)[-1] if tensor.name in ("mean", "std", "net.mean", "net.std") else None
        if name is not None and tuple(tensor.dims) == (n_channels,):
            found[name] = numpy_helper.to_array(tensor)
    return found


def load_from_registry(root: str, name: str, version: int | None = None, runtime: str = "onnx",
                       device: str = "auto", threads: int = 0, precision: str = "fp32") -> ServingModel:
    """Load, verify and smoke-test a registry version; ``threads`` > 0 pins ONNX Runtime's
    intra-op threads (and turns spinning off), 0 keeps its defaults."""
    model = build_serving_model(ModelRegistry(root).load(name, version, int8=precision == "int8"), runtime, device,
                                threads, precision)
    log.info("serving %s v%d on %s", model.name, model.version, model.provider)
    return model


def load_newest_usable(root: str, name: str, runtime: str = "onnx", device: str = "auto",
                       threads: int = 0, precision: str = "fp32") -> tuple[ServingModel, list[str]]:
    """The newest registry version that loads, verifies and passes its smoke test, with the reason
    each newer one was passed over (a deleted or corrupt artifact must not keep serving down: the
    caller reports every reason loudly). Raises :class:`ArtifactError` when no version loads.

    >>> import tempfile
    >>> load_newest_usable(tempfile.mkdtemp(), "m")
    Traceback (most recent call last):
    ...
    model.registry.ArtifactError: no usable version of 'm': none in the registry
    """
    passed_over: list[str] = []
    for version in ModelRegistry(root).servable_newest_first(name):  # not one withdrawn, shadowed or rolled back from
        try:
            return load_from_registry(root, name, version, runtime, device, threads, precision), passed_over
        except ArtifactError as exc:
            passed_over.append(f"v{version}: {exc}")
    raise ArtifactError(f"no usable version of {name!r}: {'; '.join(passed_over) or 'none in the registry'}")


def sibling_uri(artifact_uri: str, name: str) -> str:
    """A file beside a version's ``model.onnx`` (``metadata.json``, ``weights.pt``).

    >>> sibling_uri("file:///r/m/v000002/model.onnx", "metadata.json")
    'file:///r/m/v000002/metadata.json'
    """
    head, _, _ = artifact_uri.rpartition("/")
    return f"{head}/{name}"


def input_mismatch(spec: ModelSpec, window: int, channels) -> str | None:
    """Why a model cannot serve windows of ``window`` readings of ``channels`` (None when it can).

    >>> input_mismatch(ModelSpec(window=16), 32, ModelSpec().channels)
    'it takes windows of 16 readings, serving cuts 32'
    """
    if spec.window != window:
        return f"it takes windows of {spec.window} readings, serving cuts {window}"
    if list(spec.channels) != list(channels):
        return f"its channels {list(spec.channels)} differ from serving's {list(channels)}"
    return None


def load_snapshot(snapshot, runtime: str = "onnx", device: str = "auto", threads: int = 0,
                  registry_root: str | None = None, verifier=None, precision: str = "fp32") -> ServingModel:
    """Load the version a ``model-snapshots`` message announces: sha256-verified artifact,
    metadata beside it, smoke inference. With ``registry_root`` (as serving always passes it), the
    artifact must be the one that registry keeps for that name and version: an announcement cannot
    point serving at a file elsewhere. With a ``verifier`` (``model.signing.AnnouncementVerifier``),
    the announcement must carry the publishing side's signature. Raises :class:`ArtifactError` with
    the reason."""
    if verifier is not None:
        refusal = verifier.refusal(snapshot)
        if refusal:
            raise ArtifactError(refusal)
    if registry_root is not None:
        expected = ModelRegistry(registry_root).artifact_uri(snapshot.model_name, snapshot.version)
        if snapshot.artifact_uri != expected:
            raise ArtifactError(f"artifact_uri {snapshot.artifact_uri!r} is not where the registry keeps "
                                f"{snapshot.model_name} v{snapshot.version} ({expected})")
    onnx_bytes = load_verified(snapshot.artifact_uri, snapshot.sha256)
    try:
        meta = VersionMetadata(**json.loads(read_artifact(sibling_uri(snapshot.artifact_uri, "metadata.json"))))
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"metadata of {snapshot.model_name} v{snapshot.version} unreadable: {exc}") from None
    if (meta.model_name, meta.version) != (snapshot.model_name, snapshot.version):
        raise ArtifactError(f"artifact is {meta.model_name} v{meta.version}, "
                            f"announced as {snapshot.model_name} v{snapshot.version}")
    if meta.sha256 != snapshot.sha256:
        raise ArtifactError(f"announced sha256 differs from the registry's for {meta.model_name} v{meta.version}")
    weights = None
    if runtime == "torch":
        weights = load_verified(sibling_uri(snapshot.artifact_uri, "weights.pt"), meta.weights_sha256)
    int8 = None
    if precision == "int8" and INT8_FILE in meta.artifacts and snapshot.int8_sha256 is not None:
        if snapshot.int8_sha256 != meta.artifacts[INT8_FILE]:  # (the announcement's hash is the signed one)
            raise ArtifactError(f"the announced INT8 sha256 of {meta.model_name} v{meta.version} differs from the "
                                "registry's")
        int8 = load_verified(sibling_uri(snapshot.artifact_uri, INT8_FILE), snapshot.int8_sha256)
    loaded = LoadedVersion(meta, onnx_bytes, weights, snapshot.artifact_uri, int8)
    return build_serving_model(loaded, runtime, device, threads, precision)
