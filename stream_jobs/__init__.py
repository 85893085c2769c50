"""The Flink jobs and nothing else: sources, sinks, keying, state, timers and the jobs' entry points.
Each Flink function is a shell around a plain-Python class from ``operators/``."""

import importlib
import sys

from operators.python_thread import on_python_thread

# Native modules that load through the PyGILState API (pybind11, nanobind) are imported here, before any
# job module and on a Python thread of their own (operators.python_thread says why): the first import on
# an operator's task thread in PyFlink's thread mode could wait forever (scipy.spatial, which river.drift
# pulls in through scikit-learn).
NATIVE_MODULES = ("onnxruntime", "onnx", "river.drift")


def _import_native_modules() -> None:
    missing = [name for name in NATIVE_MODULES if name not in sys.modules]
    if missing:
        on_python_thread(lambda: [importlib.import_module(name) for name in missing])


_import_native_modules()
