"""Many devices' messages in, their predictions out, in one operator: the serving job's sharded layout.

Devices hash onto a fixed number of shards (``shard_of``). Java groups a shard's messages across its
devices, so one record crosses into Python for many devices' messages, and the operator keyed by shard
does the rest in Python without another crossing: :class:`ShardServing` validates and windows each
device's messages (``DeviceIntake``), keeps each shard's device states in a :class:`DeviceTable` in
memory, and scores the windows in micro-batches across all the operator's shards (an ``InferenceShard``
per served model), on a thread of its own (``operators.scoring_pipeline``) so the model runs while the next
messages are parsed; ``collect`` hands back the outputs of the batches scored so far. The job writes a
table's changes to Flink state and scores the pending windows when the marker that comes before each
checkpoint barrier reaches the shard, so the checkpoint holds every device's state and no window waits
across it. Java's marker that the readings paused (``quiet``) gets pending windows scored without waiting out
``max_wait_ms``.

>>> from operators.model_routing import ServedModel
>>> from operators.device_intake import DeviceIntake, Message
>>> from operators.serving_shard import InferenceShard
>>> serving = ShardServing(DeviceIntake.for_models([ServedModel("toy", ("x", "y"), 4, 1)]),
...                        {"toy": InferenceShard.for_tests(max_batch=2)})
>>> table = DeviceTable()
>>> def message(device, ts):
...     return device, Message(0, ts, 0, b'{"device_id": "%s", "ts": %d, "values": [1, 2]}' % (device.encode(), ts))
>>> served = serving.take(table, [message(d, ts) for ts in range(4) for d in ("a", "b")], now_ms=0)
>>> served.messages, served.windows, sorted({o.topic for o in served.outgoing}), sorted(table.states)
(8, 2, ['predictions'], ['a', 'b'])
>>> stored, gone = table.take_changes()
>>> sorted(stored), gone, table.take_changes()
(['a', 'b'], [], ({}, []))
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

from operators.batching import ListStore
from operators.device_intake import DeviceIntake, Message
from operators.outgoing import Outgoing
from operators.scoring_pipeline import ScoringPipeline
from operators.serving_model import ControlMessage
from operators.serving_shard import InferenceShard
from operators.windowing import DeviceState, SlidingWindower, Window
from schemas import DeadLetter, ModelSnapshot

IDLE_FLUSH_MS = 2_000  # a device's held readings (waiting for a gap to fill) are used after this much silence
SWEEP_MIN_MS = 1_000


def shard_of(device_id: str, shards: int) -> int:
    """The shard of a device: the CRC-32 of its id's UTF-8 bytes modulo ``shards`` (Java's
    ``ReadingGrouper.shardOf`` computes the same).

    >>> shard_of("dev-1", 8), shard_of("dev-1", 1)
    (6, 0)
    """
    return zlib.crc32(device_id.encode()) % shards


class DeviceTable:
    """The window states of one shard's devices, and which were changed or forgotten since they were last
    stored (``take_changes``). ``sweep_at``: when the shard's devices are next checked for expiry and idleness."""

    def __init__(self, states: dict[str, DeviceState] | None = None) -> None:
        self.states: dict[str, DeviceState] = dict(states or {})
        self.changed: set[str] = set()
        self.removed: set[str] = set()
        self.sweep_at: int | None = None

    def get(self, device: str) -> DeviceState | None:
        return self.states.get(device)

    def put(self, device: str, state: DeviceState) -> None:
        self.states[device] = state
        self.changed.add(device)
        self.removed.discard(device)

    def remove(self, device: str) -> None:
        self.states.pop(device, None)
        self.changed.discard(device)
        self.removed.add(device)

    def take_changes(self) -> tuple[dict[str, DeviceState], list[str]]:
        """The states changed and the devices forgotten since the last call (to write to Flink state)."""
        stored = {device: self.states[device] for device in self.changed}
        removed = sorted(self.removed)
        self.changed.clear()
        self.removed.clear()
        return stored, removed


@dataclass
class Served:
    """What a shard's group of messages (or a sweep of its devices) gave."""

    outgoing: list[Outgoing] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    messages: int = 0
    samples: int = 0
    windows: int = 0
    late: int = 0
    expired: int = 0
    sweep_at: int | None = None  # a sweep of the shard to schedule (None: none new)


@dataclass(frozen=True)
class ControlOutcome:
    """What an announcement or drift event did: outputs (only for its first copy), the snapshot now served
    (None: unchanged) and the shadow to keep (``shadow_changed``: store ``shadow``, None meaning none)."""

    outgoing: list[Outgoing]
    accepted: ModelSnapshot | None
    shadow: ModelSnapshot | None
    shadow_changed: bool


class ShardServing:
    """Validates, windows and scores the messages of one operator's shards.

    ``intake`` validates and windows; ``shards`` (per served model, the first is the default) batch and
    score across every shard of the operator. Devices silent for ``device_expiry_ms`` (0: never) are
    forgotten, and readings held back for a gap are used once their device has been idle ``idle_ms``.
    With ``threaded`` scoring, the outputs of ``take``, ``poll`` and ``flush`` come back through ``collect``
    and ``drain``; a sweep and an announcement wait for every batch (their outputs come with them).
    """

    def __init__(self, intake: DeviceIntake, shards: dict[str, InferenceShard], device_expiry_ms: int = 0,
                 idle_ms: int = IDLE_FLUSH_MS, threaded: bool = False) -> None:
        self.intake, self.shards = intake, shards
        self.pipeline = ScoringPipeline(threaded)
        for shard in shards.values():
            shard.submit = self.pipeline.submit
        self.primary = next(iter(shards))
        self.stores = {name: ListStore() for name in shards}
        self.expiry_ms, self.idle_ms = device_expiry_ms, idle_ms
        self.controls: OrderedDict[tuple, ControlOutcome] = OrderedDict()  # recent controls, by where they were read
        self.sending: set[DeviceTable] = set()  # shards whose messages came since the readings last paused

    def take(self, table: DeviceTable, records: list[tuple[str, Message]], now_ms: int) -> Served:
        """A shard's ``(device, message)`` records: each device's messages in their order, as if they came
        alone; their windows join the pending batches (scored when a batch is full)."""
        by_device: dict[str, list[Message]] = {}
        if records:
            self.sending.add(table)
        for device, message in records:
            by_device.setdefault(device, []).append(message)
        served = Served(messages=len(records))
        windows: list[Window] = []
        held = False
        for device, messages in by_device.items():
            out = self.intake.take(device, messages, table.get(device), now_ms)
            served.samples += out.samples
            served.late += out.late
            served.dead_letters += out.dead_letters
            if out.changed:
                SlidingWindower.touch(out.state, now_ms, self.expiry_ms)
                table.put(device, out.state)
                windows += out.windows
                held = held or bool(out.state.pending)
        served.outgoing = self._batch(windows, now_ms)
        served.windows = len(windows)
        wanted = now_ms + self.idle_ms if held else self._next_expiry_sweep(table, now_ms)
        if wanted is not None and (table.sweep_at is None or wanted < table.sweep_at):
            table.sweep_at = served.sweep_at = wanted
        return served

    def sweep(self, table: DeviceTable, now_ms: int) -> Served:
        """Forget the shard's expired devices and use the held readings of its idle ones; every pending window
        is scored at once (a sweep runs on a timer, which may come after the checkpoint's marker)."""
        served, windows = Served(), []
        table.sweep_at, held = None, False
        for device, state in list(table.states.items()):
            if SlidingWindower.expired(state, now_ms, self.expiry_ms):
                table.remove(device)
                served.expired += 1
                continue
            if not state.pending:
                continue
            model = self._served(state.model_name)
            windower = self.intake.windowers[model]
            if windower.idle(state, now_ms, self.idle_ms):
                windows += self.intake.with_stats(state, windower.flush(state), model)
                table.put(device, state)
            else:
                held = True
        served.windows = len(windows)
        served.outgoing = self._batch(windows, now_ms) + self.flush(now_ms) + self.drain()
        table.sweep_at = served.sweep_at = (now_ms + self.idle_ms // 2 if held
                                            else self._next_expiry_sweep(table, now_ms))
        return served

    def quiet(self, table: DeviceTable, now_ms: int) -> list[Outgoing]:
        """The readings paused after the shard's messages (the grouper's marker). Once every shard whose
        messages came since the last pause has been told so, the windows waiting for a fuller batch are handed
        over to be scored now: no more are coming soon, and waiting out ``max_wait_ms`` would only add latency.

        >>> from operators.model_routing import ServedModel
        >>> from operators.device_intake import DeviceIntake, Message
        >>> serving = ShardServing(DeviceIntake.for_models([ServedModel("toy", ("x", "y"), 4, 1)]),
        ...                        {"toy": InferenceShard.for_tests(max_batch=8, max_wait_ms=60_000)})
        >>> first, second = DeviceTable(), DeviceTable()
        >>> def readings(device):
        ...     body = b'{"device_id": "%s", "ts": %d, "values": [1, 2]}'
        ...     return [(device, Message(0, ts, 0, body % (device.encode(), ts))) for ts in range(4)]
        >>> [len(serving.take(table, readings(device), now_ms=0).outgoing)
        ...  for table, device in ((first, "a"), (second, "b"))]
        [0, 0]
        >>> len(serving.quiet(first, now_ms=5)), len(serving.quiet(second, now_ms=5))  # once both shards paused
        (0, 2)
        """
        self.sending.discard(table)
        return [] if self.sending else self.flush(now_ms)

    def _next_expiry_sweep(self, table: DeviceTable, now_ms: int) -> int | None:
        if not self.expiry_ms or not table.states:
            return None
        return now_ms + max(SWEEP_MIN_MS, self.expiry_ms // 10)

    def _served(self, model_name: str) -> str:
        """The served model a device state or window names (one kept by a one-model job names none: the first)."""
        return model_name if model_name in self.shards else self.primary

    def _batch(self, windows: list[Window], now_ms: int) -> list[Outgoing]:
        by_model: dict[str, list[Window]] = {}
        for window in windows:
            by_model.setdefault(self._served(window.model_name), []).append(window)
        out: list[Outgoing] = []
        for name, items in by_model.items():
            out += self.shards[name].on_windows(self.stores[name], items, now_ms)
        return out

    def due_at(self) -> int | None:
        """When the earliest pending batch is due (None: nothing pending)."""
        dues = [d for d in (shard.due_at(self.stores[name]) for name, shard in self.shards.items()) if d is not None]
        return min(dues) if dues else None

    def poll(self, now_ms: int) -> list[Outgoing]:
        """The batches due by ``now_ms``, scored."""
        out: list[Outgoing] = []
        for name, shard in self.shards.items():
            out += shard.on_timer(self.stores[name], now_ms)
        return out

    def flush(self, now_ms: int) -> list[Outgoing]:
        """Every pending window handed over to be scored now (before a checkpoint: then ``drain``)."""
        out: list[Outgoing] = []
        for name, shard in self.shards.items():
            out += shard.flush(self.stores[name], now_ms)
        return out

    def collect(self) -> list[Outgoing]:
        """The outputs of the batches scored since the last call (threaded scoring; else nothing)."""
        return self.pipeline.done()

    def drain(self) -> list[Outgoing]:
        """The outputs of every batch handed over, once all are scored."""
        return self.pipeline.wait()

    def busy(self) -> bool:
        return self.pipeline.in_flight > 0

    def close(self) -> None:
        self.pipeline.close()

    def control(self, control: ControlMessage, now_ms: int) -> ControlOutcome:
        """An announcement or drift event. The job sends a copy to every shard; the operator's shards share
        their models, so the first copy acts and the others only learn what it did (to keep per shard)."""
        name = control.message.model_name
        if name not in self.shards:
            return ControlOutcome([], None, None, False)  # another model's
        seen = (type(control.message).__name__, control.partition, control.offset)
        if seen in self.controls:
            first = self.controls[seen]
            return ControlOutcome([], first.accepted, first.shadow, first.shadow_changed)
        shard = self.shards[name]
        earlier = self.flush(now_ms) + self.drain()  # windows that came first: the old model, and no batch may
        #                                              be scored while the model or its review budget changes
        outgoing, accepted = shard.on_control(self.stores[name], control, now_ms)
        outgoing = earlier + outgoing + self.drain()
        shadow = shard.shadow_snapshot
        outcome = ControlOutcome(outgoing, accepted, shadow, shadow is None or control.message is shadow)
        self.controls[seen] = outcome
        while len(self.controls) > 1024:
            self.controls.popitem(last=False)
        return outcome
