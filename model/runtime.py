"""Inference runtimes: ONNX Runtime (CUDA when its libraries really load, else CPU) and torch.

Both take ``float32[batch, window, channels]`` and return class probabilities (``predict_proba``), or
every output of the model's heads by name (``predict``: ``probabilities``, ``anomaly``, ``forecast``).
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import lru_cache
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Anything that turns a batch of windows into class probabilities."""

    provider: str

    def predict_proba(self, windows: np.ndarray) -> np.ndarray: ...

    def predict(self, windows: np.ndarray) -> dict[str, np.ndarray]: ...


@lru_cache(maxsize=1)
def cuda_provider_loads() -> bool:
    """True only if the NVIDIA driver and ONNX Runtime's CUDA provider library both load.

    Asking ONNX Runtime for CUDA on a machine without CUDA libraries logs errors and
    falls back; checking with ``dlopen`` first keeps a CPU start clean.
    """
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls(directory="")
    except Exception as exc:  # noqa: BLE001 - any failure means "no CUDA"
        log.info("CUDA libraries not preloadable: %s", exc)
    lib = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
    try:
        ctypes.CDLL(lib, mode=os.RTLD_LAZY)
    except OSError as exc:
        log.info("ONNX Runtime CUDA provider does not load (%s); using CPU", exc)
        return False
    return True


def choose_providers(prefer: str = "auto") -> list[str]:
    """Execution providers to ask for: ``auto`` picks CUDA only when it loads.

    >>> choose_providers("cpu")
    ['CPUExecutionProvider']
    """
    if prefer == "cpu":
        return ["CPUExecutionProvider"]
    if prefer == "cuda" and not cuda_provider_loads():
        raise RuntimeError("CUDA was requested but the CUDA provider does not load on this machine")
    if cuda_provider_loads():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRunner:
    """ONNX Runtime session over an exported model.

    ``provider`` reports what the session really runs on, not what was asked.
    """

    def __init__(self, onnx_bytes: bytes, prefer: str = "auto", threads: int = 0, spin: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        if not spin:  # inside a busy process (a Flink TaskManager) spinning threads steal the CPU
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_bytes, options, providers=choose_providers(prefer))
        self.provider = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def predict_proba(self, windows: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(windows, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]

    def predict(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(windows, dtype=np.float32)
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))


class TorchRunner:
    """Eager PyTorch inference: the fallback when no ONNX artifact can be used."""

    def __init__(self, net, device: str = "cpu", temperature: float = 1.0, class_bias=None) -> None:
        import torch

        self.torch = torch
        self.temperature = float(temperature)
        self.class_bias = class_bias
        self.net = net.to(device).eval()
        self.device = device
        self.provider = f"torch-{device}"

    def predict_proba(self, windows: np.ndarray) -> np.ndarray:
        return self.predict(windows)["probabilities"]

    def predict(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        from model.network import ProbabilityModel
        from model.spec import output_names

        torch = self.torch
        with torch.inference_mode():
            x = torch.as_tensor(np.ascontiguousarray(windows, dtype=np.float32), device=self.device)
            out = ProbabilityModel(self.net, self.temperature, self.class_bias).to(self.device)(x)
            out = out if isinstance(out, tuple) else (out,)
            return {name: value.cpu().numpy() for name, value in zip(output_names(self.net.spec), out)}
