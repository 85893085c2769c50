"""Micro-batching across devices: flush on batch size or when the oldest item waited long enough.

>>> policy = BatchPolicy(max_batch=3, max_wait_ms=10)
>>> policy.should_flush(pending=1, oldest_ms=100, now_ms=105), policy.should_flush(1, 100, 110)
(False, True)
>>> b = MicroBatcher(policy)
>>> b.add("a", now_ms=0), b.add("b", 1), b.add("c", 2)
(None, None, ['a', 'b', 'c'])
>>> b.add("d", 3), b.poll(now_ms=12), b.poll(now_ms=13)
(None, None, ['d'])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    """When a batch is due: ``max_batch`` items, or the oldest waited ``max_wait_ms``."""

    max_batch: int = 64
    max_wait_ms: int = 20

    def should_flush(self, pending: int, oldest_ms: int | None, now_ms: int) -> bool:
        if pending <= 0:
            return False
        if pending >= self.max_batch:
            return True
        return oldest_ms is not None and now_ms - oldest_ms >= self.max_wait_ms

    def deadline(self, oldest_ms: int) -> int:
        return oldest_ms + self.max_wait_ms


class MicroBatcher(Generic[T]):
    """In-memory micro-batcher (the Flink job keeps the same items in checkpointed state)."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self.items: list[T] = []
        self.oldest_ms: int | None = None

    def add(self, item: T, now_ms: int) -> list[T] | None:
        if not self.items:
            self.oldest_ms = now_ms
        self.items.append(item)
        return self.poll(now_ms)

    def poll(self, now_ms: int) -> list[T] | None:
        if self.policy.should_flush(len(self.items), self.oldest_ms, now_ms):
            return self.take()
        return None

    def take(self) -> list[T]:
        batch, self.items, self.oldest_ms = self.items, [], None
        return batch
