"""Native calls that must run on a thread the interpreter's ``PyGILState`` API knows.

In PyFlink's thread mode an operator's Python runs on its Flink task thread, under a thread state that
``PyGILState`` does not know (except on the one thread that started the interpreter). Native modules
that take or check the interpreter lock through that API misbehave there: a pybind11 module waits
forever while it loads (scipy.spatial), and the nanobind-built ``onnx`` module aborts the whole JVM
("PyGILState_Check() failure"). :func:`on_python_thread` runs such a call on a short-lived Python
thread instead, whose thread state the API knows, and hands back its result or exception;
:func:`import_on_python_thread` imports a module that way (the first time).

>>> import_on_python_thread("json").dumps([1])
'[1]'
>>> on_python_thread(sum, [1, 2, 3])
6
>>> on_python_thread(int, "x")
Traceback (most recent call last):
...
ValueError: invalid literal for int() with base 10: 'x'
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Callable, TypeVar

T = TypeVar("T")


def on_python_thread(fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` on a new Python thread; the caller waits (without the interpreter lock) for it."""
    result: list = []

    def call() -> None:
        try:
            result.append((True, fn(*args)))
        except BaseException as exc:  # raised again on the caller's thread
            result.append((False, exc))

    thread = threading.Thread(target=call, name="sensorloop-native-call", daemon=True)
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def import_on_python_thread(name: str) -> ModuleType:
    """Module ``name``, imported on a Python thread of its own unless it already was (river.drift, which pulls
    in scikit-learn and SciPy's pybind11 modules, hangs when first imported on a Flink task thread)."""
    if name in sys.modules:
        return importlib.import_module(name)  # waits, if another thread is still importing it
    return on_python_thread(importlib.import_module, name)
