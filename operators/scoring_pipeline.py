"""Scoring on a thread of its own, so the model runs while the operator's thread parses the next messages.

ONNX Runtime lets go of the interpreter lock while it runs a batch, so a batch scored on a second thread
overlaps with the parsing and windowing of the next messages on the first: with one Python operator doing
both (the serving job's sharded layout) that is what keeps a second core busy. Batches are scored one at a
time in the order they were handed over, and their outputs come back in that order (``done``: those
finished; ``wait``: all of them). At most ``max_in_flight`` wait; handing over one more first waits for the
oldest, so a model slower than the intake slows the intake instead of piling up batches.

>>> pipeline = ScoringPipeline()
>>> pipeline.submit(lambda: ["a"]), pipeline.submit(lambda: ["b", "c"])
([], [])
>>> pipeline.wait(), pipeline.in_flight
(['a', 'b', 'c'], 0)
>>> ScoringPipeline(threaded=False).submit(lambda: ["now"])
['now']
"""

from __future__ import annotations

import ctypes
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")
THREAD_NAME = "sl-scoring"  # the worker's name in ps, top -H and /proc (Linux), beside the Flink task threads


def _name_native_thread() -> None:
    """Give the worker's OS thread a name (Python names only its own thread object)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(15, THREAD_NAME.encode(), 0, 0, 0)  # PR_SET_NAME
        except (OSError, AttributeError):
            pass


class ScoringPipeline:
    """Runs scoring calls (each returning a list of outputs) on one worker thread, in order; ``threaded=False``
    runs each at once on the caller's thread."""

    def __init__(self, threaded: bool = True, max_in_flight: int = 2) -> None:
        self.executor = (ThreadPoolExecutor(1, thread_name_prefix=THREAD_NAME, initializer=_name_native_thread)
                         if threaded else None)
        self.max_in_flight = max_in_flight
        self.pending: deque[Future] = deque()
        self.early: list = []  # outputs of batches waited for to make room, handed back by the next done/wait

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def submit(self, score: Callable[[], list[T]]) -> list[T]:
        """Score later (returns nothing now), or at once when not threaded (returns the outputs)."""
        if self.executor is None:
            return score()
        while len(self.pending) >= self.max_in_flight:
            self.early += self.pending.popleft().result()
        self.pending.append(self.executor.submit(score))
        return []

    def done(self) -> list[T]:
        """The outputs of the batches finished so far, oldest first (an exception of one is raised here)."""
        out, self.early = self.early, []
        while self.pending and self.pending[0].done():
            out += self.pending.popleft().result()
        return out

    def wait(self) -> list[T]:
        """The outputs of every batch handed over, once all are scored."""
        out, self.early = self.early, []
        while self.pending:
            out += self.pending.popleft().result()
        return out

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
