"""Notices when the broker loses or resets a topic under a running job.

A job keeps its read position per partition. When the broker comes back empty (an in-memory broker
restarted) or a topic is deleted and recreated, that position lies beyond the partition's end:
Apache Kafka answers "offset out of range" and the consumer starts over from the beginning, Tansu
answers with nothing and the job waits for ever while every checkpoint completes. ``SourceWatch``
tells both apart from a healthy stream: the first as a partition whose offsets go back, the second as
a record the job already read that the broker no longer has.

>>> watch = SourceWatch("sensor-readings")
>>> watch.see(0, 41), watch.see(0, 42)
(None, None)
>>> print(watch.see(0, 3).message())
sensor-readings partition 0: offsets went back from 42 to 3: the topic was reset or recreated
>>> watch.check(lambda positions: {p: True for p in positions})   # the broker still has offset 3
[]
>>> gone = lambda positions: {p: False for p in positions}
>>> [r.partition for r in watch.check(gone)]   # twice in a row: gone
[]
>>> [r.partition for r in watch.check(gone)]
[0]
>>> watch.stalled_partitions(), watch.resets
(1, 2)
>>> watch.see(0, 4) is None, watch.stalled_partitions()   # reading again
(True, 0)

A job restored from a checkpoint has read nothing yet, and its watch knows no offset. If the broker lost the
topic meanwhile, the job resumes beyond the partition's end and reads nothing for ever. So the watch also takes
the offsets the job's consumer group committed (the source commits its position with every checkpoint), for
partitions it has not read: the record before each is the last one the job read.

>>> restored = SourceWatch("sensor-readings")
>>> [r.partition for r in restored.check(gone, committed=lambda: {0: 162, 1: 0})]   # 1: nothing read yet
[]
>>> print(restored.check(gone, committed=lambda: {0: 162})[0].message())
sensor-readings partition 0: the broker no longer has offset 161, the last the job's consumer group committed as read: the topic was reset or lost (an in-memory broker restarted?); the restored job will wait until the partition grows past that offset
>>> restored.see(0, 5) is None   # reading again from an older position (a savepoint, say) is no reset
True

A partition that only other subtasks read is followed by the group's commits, which move on:

>>> elsewhere = SourceWatch("sensor-readings")
>>> [elsewhere.check(gone, committed=lambda at=at: {0: at}) for at in (10, 20, 30)]
[[], [], []]
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

# for {partition: offset}, whether the broker still holds each: True, False, or None when it cannot tell
RecordProbe = Callable[[dict[int, int]], dict[int, "bool | None"]]
# {partition: offset} that the job's consumer group committed (the next offset to read); {} when unknown
CommittedOffsets = Callable[[], dict[int, int]]


@dataclass(frozen=True)
class SourceReset:
    """A partition whose records the job had read are gone or were replaced."""

    topic: str
    partition: int
    seen_offset: int
    reason: str

    def message(self) -> str:
        return f"{self.topic} partition {self.partition}: {self.reason}"


class SourceWatch:
    """The newest offset read per partition, checked against the broker now and then.

    ``see`` runs on the job's thread for every record; ``check`` may run on another thread.
    A partition is reported as gone after ``confirmations`` negative checks in a row (a broker that
    is merely slow answers None, which neither confirms nor clears).
    """

    def __init__(self, topic: str, confirmations: int = 2) -> None:
        self.topic, self.confirmations = topic, confirmations
        self.newest: dict[int, int] = {}
        self.committed: set[int] = set()  # partitions whose newest offset came from the group's commit, not a read
        self.misses: dict[int, int] = {}
        self.stalled: set[int] = set()
        self.resets = 0
        self.lock = threading.Lock()

    def see(self, partition: int, offset: int) -> SourceReset | None:
        """Record that ``offset`` was read; a reset when the partition went back."""
        with self.lock:
            previous = self.newest.get(partition)
            self.newest[partition] = offset
            self.stalled.discard(partition)
            self.misses.pop(partition, None)
            if partition in self.committed:  # a restored job may resume before its group's commit (a savepoint)
                self.committed.discard(partition)
                return None
            if previous is None or offset > previous:
                return None
            self.resets += 1
        return SourceReset(self.topic, partition, previous,
                           f"offsets went back from {previous} to {offset}: the topic was reset or recreated")

    def check(self, record_exists: RecordProbe, committed: CommittedOffsets | None = None) -> list[SourceReset]:
        """Ask the broker for the newest record read on each partition; the newly stalled ones. ``committed``:
        the job's group's committed offsets, taken for partitions not read yet (see the module's doc)."""
        if committed is not None:
            self._take_committed(committed)
        with self.lock:
            positions = {p: o for p, o in self.newest.items() if p not in self.stalled}
        answers = record_exists(positions) if positions else {}
        found = []
        for partition, offset in sorted(positions.items()):
            exists = answers.get(partition)
            with self.lock:
                if self.newest.get(partition) != offset:  # read on meanwhile
                    continue
                if exists is None:
                    continue
                if exists:
                    self.misses.pop(partition, None)
                    continue
                self.misses[partition] = self.misses.get(partition, 0) + 1
                if self.misses[partition] < self.confirmations:
                    continue
                self.stalled.add(partition)
                self.resets += 1
                restored = partition in self.committed
            read, job = (("the last the job's consumer group committed as read", "the restored job") if restored
                         else ("which the job already read", "the job"))
            found.append(SourceReset(
                self.topic, partition, offset,
                f"the broker no longer has offset {offset}, {read}: the topic was reset or lost (an in-memory broker "
                f"restarted?); {job} will wait until the partition grows past that offset"))
        return found

    def _take_committed(self, committed: CommittedOffsets) -> None:
        """The group's committed offsets as the newest read, for partitions this watch has not read. They are
        taken again while the group commits further (other subtasks read the partition), so the record checked
        is never an old one that the broker's retention may have deleted since."""
        offsets = committed()
        with self.lock:
            for partition, offset in offsets.items():
                if offset <= 0 or (partition in self.newest and partition not in self.committed):
                    continue  # nothing read there yet, or read by this watch's own job
                if self.newest.get(partition, offset - 1) != offset - 1:  # the job reads on there
                    self.misses.pop(partition, None)
                    self.stalled.discard(partition)
                self.newest[partition] = offset - 1
                self.committed.add(partition)

    def stalled_partitions(self) -> int:
        with self.lock:
            return len(self.stalled)
