"""Micro-batching across devices: flush on batch size or when the oldest item waited long enough.

The batcher keeps nothing itself: the pending items live in a :class:`PendingStore`, an in-memory
list here and in the tests, checkpointed keyed state in the Flink job; the same ``MicroBatcher``
decides in both.

>>> policy = BatchPolicy(max_batch=3, max_wait_ms=10)
>>> policy.should_flush(pending=1, oldest_ms=100, now_ms=105), policy.should_flush(1, 100, 110)
(False, True)
>>> b, store = MicroBatcher(policy), ListStore()
>>> b.add(store, "a", now_ms=0), b.add(store, "b", 1), b.add(store, "c", 2)
(None, None, ['a', 'b', 'c'])
>>> b.add(store, "d", 3), b.deadline(store), b.poll(store, now_ms=12), b.poll(store, now_ms=13)
(None, 13, None, ['d'])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    """When a batch is due: ``max_batch`` items, or the oldest waited ``max_wait_ms``."""

    max_batch: int = 64
    max_wait_ms: int = 10

    def should_flush(self, pending: int, oldest_ms: int | None, now_ms: int) -> bool:
        if pending <= 0:
            return False
        if pending >= self.max_batch:
            return True
        return oldest_ms is not None and now_ms - oldest_ms >= self.max_wait_ms

    def deadline(self, oldest_ms: int) -> int:
        return oldest_ms + self.max_wait_ms


class PendingStore(Protocol[T]):
    """Where pending items wait: appended one by one and taken all at once (which empties the store),
    with their count and the arrival time of the oldest."""

    def append(self, item: T) -> int:
        """Store ``item``; returns how many are pending now."""

    def extend(self, items: list[T]) -> int:
        """Store several items at once (one state write in the job); returns how many are pending now."""

    def take_all(self) -> list[T]: ...

    def count(self) -> int: ...

    def oldest_ms(self) -> int | None: ...

    def set_oldest_ms(self, ms: int) -> None: ...


class ListStore(Generic[T]):
    """A :class:`PendingStore` in memory."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._oldest: int | None = None

    def append(self, item: T) -> int:
        self.items.append(item)
        return len(self.items)

    def extend(self, items: list[T]) -> int:
        self.items.extend(items)
        return len(self.items)

    def take_all(self) -> list[T]:
        items, self.items, self._oldest = self.items, [], None
        return items

    def count(self) -> int:
        return len(self.items)

    def oldest_ms(self) -> int | None:
        return self._oldest

    def set_oldest_ms(self, ms: int) -> None:
        self._oldest = ms


class MicroBatcher(Generic[T]):
    """Adds items to a store and says when a batch is due (then hands it over, emptying the store)."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy

    def add(self, store: PendingStore[T], item: T, now_ms: int) -> list[T] | None:
        ready = self._pending_if_full_with(store, 1)
        return ready + [item] if ready is not None else self._due(store, store.append(item), now_ms)

    def add_many(self, store: PendingStore[T], items: list[T], now_ms: int) -> list[T] | None:
        """As :meth:`add` for the items of one input record (a sample block's windows). Items that make the
        batch full are handed over with the pending ones without being stored (in the job: not pickled into
        keyed state only to be read back at once).

        >>> b, store = MicroBatcher(BatchPolicy(max_batch=3, max_wait_ms=10)), ListStore()
        >>> b.add_many(store, ["a", "b"], now_ms=0), b.add_many(store, ["c", "d"], now_ms=1)
        (None, ['a', 'b', 'c', 'd'])
        """
        ready = self._pending_if_full_with(store, len(items))
        return ready + list(items) if ready is not None else self._due(store, store.extend(items), now_ms)

    def _pending_if_full_with(self, store: PendingStore[T], n: int) -> list[T] | None:
        """The pending items, taken from the store, when ``n`` more make a full batch; else None."""
        pending = store.count()
        if pending + n < self.policy.max_batch:
            return None
        return store.take_all() if pending else []

    def _due(self, store: PendingStore[T], count: int, now_ms: int) -> list[T] | None:
        """After adding: the batch when it is due (the store emptied), else None."""
        oldest = store.oldest_ms()
        if oldest is None:
            oldest = now_ms
            store.set_oldest_ms(now_ms)
        return store.take_all() if self.policy.should_flush(count, oldest, now_ms) else None

    def poll(self, store: PendingStore[T], now_ms: int) -> list[T] | None:
        due = self.policy.should_flush(store.count(), store.oldest_ms(), now_ms)
        return store.take_all() if due else None

    def deadline(self, store: PendingStore[T]) -> int | None:
        """When the pending batch is due at the latest (None when nothing is pending)."""
        oldest = store.oldest_ms()
        return None if oldest is None else self.policy.deadline(oldest)
