"""The serving job's ``sharded`` layout (the default): one Python operator keyed by inference shard parses,
windows and scores (``operators.shard_serving``)."""

from __future__ import annotations

import logging
import sys

from pyflink.common import Types
from pyflink.datastream import KeyedCoProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from operators.model_routing import ServedModel
from operators.serving_model import ControlMessage
from operators.shard_serving import IDLE_FLUSH_MS, DeviceTable, ShardServing, shard_of
from settings import Config
from stream_jobs.flink_env import quiet_embedded_logging, subtask_index
from stream_jobs.kafka_io import CHECKPOINT_MARK, QUIET_MARK, unpack_shard_group
from stream_jobs.serving_parts import (
    IntakeCounts,
    LocalCounter,
    Outputs,
    ServedVersions,
    device_intake,
    open_inference_shards,
)

log = logging.getLogger(__name__)
OUTPUTS_MS = 5  # while batches are being scored on the scoring thread, their outputs go out within about this


class ServeShards(KeyedCoProcessFunction):
    """The sharded layout's one Python operator, keyed by shard: a shard's grouped messages of many devices on
    the first input (``ReadingGrouper`` with shards), announcements and drift events on the second.

    ``operators.shard_serving.ShardServing`` validates, windows and scores; each shard's device states are
    held in memory and written to the ``devices`` map state (device id -> window state) when the grouper's
    marker before a checkpoint barrier comes, and pending windows are scored then, so a checkpoint holds
    every device's state and no pending window. Sweeps on timers (expiry, held readings of idle devices)
    write their changes at once."""

    def __init__(self, cfg: Config, models: list[ServedModel], shards: int, stats_file: str = "",
                 group_id: str | None = None) -> None:
        self.cfg, self.models, self.shard_count, self.stats_file = cfg, models, shards, stats_file
        self.group_id = group_id  # the readings source's consumer group (its committed offsets: SourceWatch)

    def open(self, runtime_context: RuntimeContext) -> None:
        quiet_embedded_logging()
        # with serving.scoring_thread, the task thread parses while the scoring thread waits to take the lock back
        # after each model call: a shorter switch interval than Python's 5 ms cut that wait from about a quarter of
        # the model calls' time
        sys.setswitchinterval(self.cfg.serving.switch_interval_ms / 1000)
        group = runtime_context.get_metrics_group()
        self.inference = open_inference_shards(self.cfg, self.models, self.stats_file, group)
        self.serving = ShardServing(device_intake(self.cfg, self.models), self.inference,
                                    self.cfg.serving.device_expiry_ms, IDLE_FLUSH_MS,
                                    threaded=self.cfg.serving.scoring_thread)
        self.versions = ServedVersions(runtime_context, self.inference)
        self.devices = runtime_context.get_map_state(
            MapStateDescriptor("devices", Types.STRING(), Types.PICKLED_BYTE_ARRAY()))
        self.tables: dict[int, DeviceTable] = {}
        self.next_timer: int | None = None  # the earliest timer set for batches and outputs (any shard's key)
        self.counts = IntakeCounts(self.cfg, group, self.group_id,  # the markers are not counted
                                   subtask_index(runtime_context))
        self.orphaned = LocalCounter(group, "devices_orphaned")
        self.outputs = Outputs(self.inference)

    def close(self) -> None:
        if getattr(self, "counts", None) is not None:
            self.counts.stop()
        if getattr(self, "serving", None) is not None:
            self.serving.close()
        for shard in getattr(self, "inference", {}).values():
            shard.report()

    def _table(self, shard: int, ctx) -> DeviceTable:
        """The shard's devices, read from state the first time after a (re)start. Devices stored under this
        shard that now hash elsewhere (``serving.inference_shards`` changed) cannot move to their new key:
        their state is dropped and counted (``devices_orphaned``); their next windows start afresh."""
        table = self.tables.get(shard)
        if table is None:
            states, orphans = {}, []
            for device, state in self.devices.items():
                if shard_of(device, self.shard_count) == shard:
                    states[device] = state
                else:
                    orphans.append(device)
            for device in orphans:
                self.devices.remove(device)
            if orphans:
                self.orphaned.inc(len(orphans))
                log.warning("shard %d: %d devices stored here now hash to other shards (inference_shards changed); "
                            "their windows start afresh", shard, len(orphans))
            table = self.tables[shard] = DeviceTable(states)
            if states:  # a restored shard: sweep it once for expiry and held readings
                table.sweep_at = ctx.timer_service().current_processing_time() + IDLE_FLUSH_MS
                ctx.timer_service().register_processing_time_timer(table.sweep_at)
        return table

    def _store(self, table: DeviceTable) -> None:
        stored, removed = table.take_changes()
        for device, state in stored.items():  # one put each: MapState.put_all took the JVM down in thread mode
            self.devices.put(device, state)
        for device in removed:
            self.devices.remove(device)

    def _emit(self, outgoing):
        return self.outputs.packed(outgoing)

    def _schedule(self, ctx, now: int) -> None:
        """A timer for the earliest due batch, or soon while batches are being scored (their outputs go out on
        the next record or this timer)."""
        due = self.serving.due_at()
        if self.serving.busy():
            due = min(due, now + OUTPUTS_MS) if due is not None else now + OUTPUTS_MS
        if due is not None and (self.next_timer is None or due < self.next_timer):
            self.next_timer = due
            ctx.timer_service().register_processing_time_timer(due)

    def process_element1(self, value, ctx: KeyedCoProcessFunction.Context):
        """A shard's group of messages, the marker before a checkpoint barrier, or the marker that the
        readings paused."""
        self.versions.check_restored()
        timers = ctx.timer_service()
        now = timers.current_processing_time()
        table = self._table(ctx.get_current_key(), ctx)
        if value == CHECKPOINT_MARK:  # the checkpoint holds every device's state and no window waits across it
            self._store(table)
            yield from self._emit(self.serving.flush(now) + self.serving.drain())
            return
        if value == QUIET_MARK:  # the readings paused after this shard's records: no fuller batch is coming soon
            yield from self._emit(self.serving.quiet(table, now) + self.serving.collect())
            self._schedule(ctx, now)
            return
        pairs = unpack_shard_group(value)
        messages = self.counts.messages([envelope for _, envelope in pairs])
        served = self.serving.take(table, [(device, m) for (device, _), m in zip(pairs, messages)], now)
        self.counts.took(served.samples, served.late)
        if served.windows:
            self.counts.windows.inc(served.windows)
        for letter in served.dead_letters:
            yield self.counts.dead_letter(letter)
        yield from self._emit(served.outgoing + self.serving.collect())
        if served.sweep_at is not None:
            timers.register_processing_time_timer(served.sweep_at)
        self._schedule(ctx, now)

    def process_element2(self, control: ControlMessage, ctx: KeyedCoProcessFunction.Context):
        self.versions.check_restored()
        outcome = self.serving.control(control, ctx.timer_service().current_processing_time())
        if control.message.model_name in self.inference:
            self.versions.keep(control.message.model_name, outcome.accepted, outcome.shadow, outcome.shadow_changed)
        yield from self._emit(outcome.outgoing + self.serving.collect())
        self._schedule(ctx, ctx.timer_service().current_processing_time())

    def on_timer(self, timestamp: int, ctx: KeyedCoProcessFunction.OnTimerContext):
        now = ctx.timer_service().current_processing_time()
        if self.next_timer is not None and timestamp >= self.next_timer:
            self.next_timer = None
        table = self._table(ctx.get_current_key(), ctx)
        if table.sweep_at is not None and timestamp >= table.sweep_at:
            # a timer may come after the checkpoint's marker: the sweep's changes are written now, and its windows
            # are scored and sent now (ShardServing.sweep waits for them), so the checkpoint cannot hold a state
            # whose windows were never sent. A batch due on a timer comes from records before the next marker,
            # which waits for it.
            served = self.serving.sweep(table, now)
            self._store(table)
            if served.expired:
                self.counts.expired.inc(served.expired)
            if served.windows:
                self.counts.windows.inc(served.windows)
            yield from self._emit(served.outgoing)
            if served.sweep_at is not None:
                ctx.timer_service().register_processing_time_timer(served.sweep_at)
        yield from self._emit(self.serving.poll(now) + self.serving.collect())
        self._schedule(ctx, now)
