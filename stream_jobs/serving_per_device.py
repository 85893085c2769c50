"""The serving job's ``per_device`` layout: window state keyed by device (``parse-and-window``), windows keyed by
inference shard to a second operator (``inference``) whose pending batches live in list state. The earlier
layout, kept for savepoints taken with it."""

from __future__ import annotations

import logging

from pyflink.common import Row, Types
from pyflink.datastream import KeyedCoProcessFunction, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from operators.model_routing import ServedModel
from operators.serving_model import ControlMessage
from operators.shard_serving import IDLE_FLUSH_MS, shard_of
from operators.windowing import SlidingWindower
from settings import Config
from stream_jobs.flink_env import quiet_embedded_logging, subtask_index
from stream_jobs.kafka_io import unpack_group
from stream_jobs.serving_parts import (
    IntakeCounts,
    Outputs,
    ServedVersions,
    _suffix,
    device_intake,
    open_inference_shards,
)

log = logging.getLogger(__name__)


class ReadingsToWindows(KeyedProcessFunction):
    """Validate each record and cut per-device sliding windows, in one keyed operator.

    The stream is keyed in Java by the payload's ``device_id`` (``JsonKeyedDeserializer``), and a device's
    messages are grouped there (``ReadingGrouper``, ``serving.group_readings`` / ``group_ms``), so a group
    crosses into Python once, with one read and one write of the device's state. With several served
    models, each reading's device type (or device id pattern) picks the model whose channels, window and
    stride apply. Bad records become dead letters with their partition and offset; window state lives in
    Flink keyed state (checkpointed).
    """

    def __init__(self, cfg: Config, models: list[ServedModel], shards: int, group_id: str | None = None) -> None:
        self.cfg, self.models, self.shards = cfg, models, shards
        self.group_id = group_id  # the readings source's consumer group (its committed offsets: SourceWatch)

    def _to_shard(self, windows) -> Row:
        """Windows as ``Row(inference shard, windows)``, keyed in Java (``keyed_by_first_field``)."""
        return Row(shard_of((windows[0] if isinstance(windows, list) else windows).device_id, self.shards), windows)

    def open(self, runtime_context: RuntimeContext) -> None:
        quiet_embedded_logging()
        self.intake = device_intake(self.cfg, self.models)
        self.windowers = self.intake.windowers
        self.state = runtime_context.get_state(ValueStateDescriptor("device", Types.PICKLED_BYTE_ARRAY()))
        self.counts = IntakeCounts(self.cfg, runtime_context.get_metrics_group(), self.group_id,
                                   subtask_index(runtime_context))

    def close(self) -> None:
        if getattr(self, "counts", None) is not None:
            self.counts.stop()

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        """One message of a device, or a group of its messages (``ReadingGrouper``): each is validated and
        windowed in order as if it came alone (``DeviceIntake``), with one state read and write and one record
        for all the windows they complete."""
        now = ctx.timer_service().current_processing_time()
        messages = self.counts.messages(unpack_group(value))
        out = self.intake.take(ctx.get_current_key(), messages, self.state.value(), now)
        self.counts.took(out.samples, out.late)
        for letter in out.dead_letters:
            yield self.counts.dead_letter(letter)
        if not out.changed:
            return
        state = out.state
        expiry_check = SlidingWindower.touch(state, now, self.cfg.serving.device_expiry_ms)
        self.state.update(state)
        if expiry_check is not None:
            ctx.timer_service().register_processing_time_timer(expiry_check)
        windows = out.windows
        if windows:
            self.counts.windows.inc(len(windows))
            yield self._to_shard(windows if len(windows) > 1 else windows[0])  # several travel on as one record
        if state.pending:
            ctx.timer_service().register_processing_time_timer(now + IDLE_FLUSH_MS)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        state = self.state.value()
        if state is None:
            return
        now = ctx.timer_service().current_processing_time()
        model = state.model_name or self.cfg.registry.model_name
        model = model if model in self.windowers else self.models[0].name
        windower = self.windowers[model]
        if windower.expired(state, now, self.cfg.serving.device_expiry_ms):
            self.state.clear()  # held readings older than the expiry are of no use to any window
            self.counts.expired.inc()
            return
        if not state.pending:
            return
        if not windower.idle(state, now, IDLE_FLUSH_MS):
            ctx.timer_service().register_processing_time_timer(timestamp + IDLE_FLUSH_MS)
            return
        windows = self.intake.with_stats(state, windower.flush(state), model)
        self.state.update(state)
        for window in windows:
            self.counts.windows.inc()
            yield self._to_shard(window)


class PendingState:
    """The pending windows of one shard and model in Flink keyed state (an ``operators.batching.PendingStore``);
    ``suffix`` tells models apart (the first served model keeps the unsuffixed names of one-model jobs)."""

    def __init__(self, runtime_context: RuntimeContext, suffix: str = "") -> None:
        self.items = runtime_context.get_list_state(ListStateDescriptor("pending" + suffix,
                                                                        Types.PICKLED_BYTE_ARRAY()))
        self.n = runtime_context.get_state(ValueStateDescriptor("count" + suffix, Types.INT()))
        self.oldest = runtime_context.get_state(ValueStateDescriptor("oldest" + suffix, Types.LONG()))

    def append(self, item) -> int:
        self.items.add(item)
        n = (self.n.value() or 0) + 1
        self.n.update(n)
        return n

    def extend(self, items: list) -> int:
        self.items.add(list(items))  # one entry holding them all
        n = (self.n.value() or 0) + len(items)
        self.n.update(n)
        return n

    def take_all(self) -> list:
        items = []
        for entry in self.items.get():
            if isinstance(entry, list):
                items.extend(entry)
            else:
                items.append(entry)
        self.items.clear()
        self.n.clear()
        self.oldest.clear()
        return items

    def count(self) -> int:
        return self.n.value() or 0

    def oldest_ms(self) -> int | None:
        return self.oldest.value()

    def set_oldest_ms(self, ms: int) -> None:
        self.oldest.update(ms)


class InferBatches(KeyedCoProcessFunction):
    """Windows on the first input and model announcements / drift events on the second, both keyed
    by inference shard; per served model an ``operators.serving_shard.InferenceShard`` does the work
    (its own batches, review budget and version). The accepted announcements (and the version in its
    shadow phase) are kept in keyed state, so a restored job serves and shadows the same versions."""

    def __init__(self, cfg: Config, models: list[ServedModel], stats_file: str = "") -> None:
        self.cfg, self.models, self.stats_file = cfg, models, stats_file

    def open(self, runtime_context: RuntimeContext) -> None:
        quiet_embedded_logging()
        self.primary = self.models[0].name
        self.shards = open_inference_shards(self.cfg, self.models, self.stats_file, runtime_context.get_metrics_group())
        self.stores = {name: PendingState(runtime_context, _suffix(i, name)) for i, name in enumerate(self.shards)}
        self.versions = ServedVersions(runtime_context, self.shards)
        self.outputs = Outputs(self.shards)

    def _emit(self, outgoing):
        return self.outputs.packed(outgoing)

    def process_element1(self, window, ctx: KeyedCoProcessFunction.Context):
        """A window, or the list of windows one sample block completed."""
        self.versions.check_restored()
        first = window[0] if isinstance(window, list) else window
        name = first.model_name or self.primary
        shard, store = self.shards[name], self.stores[name]
        now = ctx.timer_service().current_processing_time()
        outgoing = (shard.on_windows(store, window, now) if isinstance(window, list)
                    else shard.on_window(store, window, now))
        yield from self._emit(outgoing)
        due = shard.due_at(store)
        if due is not None:
            ctx.timer_service().register_processing_time_timer(due)

    def process_element2(self, control: ControlMessage, ctx: KeyedCoProcessFunction.Context):
        self.versions.check_restored()
        name = control.message.model_name
        if name not in self.shards:
            return  # another model's announcement or drift event
        outgoing, accepted = self.shards[name].on_control(self.stores[name], control,
                                                          ctx.timer_service().current_processing_time())
        shadow = self.shards[name].shadow_snapshot
        self.versions.keep(name, accepted, shadow, shadow is None or control.message is shadow)
        yield from self._emit(outgoing)

    def on_timer(self, timestamp: int, ctx: KeyedCoProcessFunction.OnTimerContext):
        now = ctx.timer_service().current_processing_time()
        for name, shard in self.shards.items():
            yield from self._emit(shard.on_timer(self.stores[name], now))

    def close(self) -> None:
        for shard in getattr(self, "shards", {}).values():
            shard.report()
