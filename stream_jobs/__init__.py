"""The Flink jobs and nothing else: sources, sinks, keying, state, timers and the jobs' entry points.
Each Flink function is a shell around a plain-Python class from ``operators/``."""

from operators.python_thread import import_on_python_thread

# Native modules that load through the PyGILState API (pybind11, nanobind) are imported before any job
# module, each on a Python thread of its own (operators.python_thread says why). river.drift (scikit-learn,
# SciPy) is imported the same way where it is used (operators.confidence_watch, operators.drift), so a
# process that only builds a job graph does not load it.
NATIVE_MODULES = ("onnxruntime", "onnx")

for _name in NATIVE_MODULES:
    import_on_python_thread(_name)
