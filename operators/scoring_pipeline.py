"""The model on a thread of its own, so it runs while the operator's thread parses the next messages.

ONNX Runtime lets go of the interpreter lock while it runs a batch, so a batch run on a second thread
overlaps with the parsing and windowing of the next messages on the first: with one Python operator doing
both (the serving job's sharded layout) that is what keeps a second core busy. Only the model call runs
there (``run``); what the batch gives (``finish``: predictions, review routing, records) is made on the
caller's thread when the batch is collected, so the second thread hardly needs the interpreter lock. Batches
run one at a time in the order they were handed over, and their outputs come back in that order (``done``:
those finished; ``wait``: all of them). At most ``max_in_flight`` wait; handing over one more first waits
for the oldest, so a model slower than the intake slows the intake instead of piling up batches.

>>> pipeline = ScoringPipeline()
>>> pipeline.submit(lambda: "a", list), pipeline.submit(lambda: "bc", list)
([], [])
>>> pipeline.wait(), pipeline.in_flight
(['a', 'b', 'c'], 0)
>>> ScoringPipeline(threaded=False).submit(lambda: "now", lambda word: [word.upper()])
['NOW']
"""

from __future__ import annotations

import ctypes
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

R = TypeVar("R")
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
    """Runs model calls on one worker thread, in order, and turns each result into outputs on the caller's thread
    (``finish``) when it is collected; ``threaded=False`` does both at once on the caller's thread."""

    def __init__(self, threaded: bool = True, max_in_flight: int = 2) -> None:
        self.executor = (ThreadPoolExecutor(1, thread_name_prefix=THREAD_NAME, initializer=_name_native_thread)
                         if threaded else None)
        self.max_in_flight = max_in_flight
        self.pending: deque[tuple[Future, Callable[[Any], list]]] = deque()
        self.early: list = []  # outputs of batches waited for to make room, handed back by the next done/wait

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def submit(self, run: Callable[[], R], finish: Callable[[R], list[T]]) -> list[T]:
        """``run`` on the worker and ``finish`` its result later (returns nothing now), or both at once when not
        threaded (returns the outputs)."""
        if self.executor is None:
            return finish(run())
        while len(self.pending) >= self.max_in_flight:
            self.early += self._finish_oldest()
        self.pending.append((self.executor.submit(run), finish))
        return []

    def _finish_oldest(self) -> list[T]:
        future, finish = self.pending.popleft()
        return finish(future.result())

    def done(self) -> list[T]:
        """The outputs of the batches finished so far, oldest first (an exception of one is raised here)."""
        out, self.early = self.early, []
        while self.pending and self.pending[0][0].done():
            out += self._finish_oldest()
        return out

    def wait(self) -> list[T]:
        """The outputs of every batch handed over, once all are run."""
        out, self.early = self.early, []
        while self.pending:
            out += self._finish_oldest()
        return out

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
