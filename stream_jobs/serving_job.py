"""The serving job: sensor-readings → parse → per-device windows → micro-batched inference →
predictions, review requests and dead letters.

Run: ``python -m stream_jobs.serving_job [--config FILE] [--set section.key=value ...]`` (the CLI's
``serve``, ``job submit serving`` and a FlinkDeployment all start it this way).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import replace

from pyflink.common import Row, Types
from pyflink.datastream import KeyedCoProcessFunction, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor

from model.registry import ArtifactError, ModelRegistry
from model.spec import ModelSpec
from model.signing import AnnouncementVerifier
from operators.device_intake import DeviceIntake, Message
from operators.device_normalisation import DeviceNormaliser
from operators.model_routing import DeviceRouter, ServedModel, served_models
from operators.parse import ReadingParser, RoutedParser, raw_text
from operators.serving_model import (
    ControlMessage,
    input_mismatch,
    load_from_registry,
    load_newest_usable,
    load_snapshot,
    untrained_model,
)
from operators.serving_shard import InferenceShard
from operators.shard_serving import IDLE_FLUSH_MS, DeviceTable, ShardServing, shard_of
from operators.source_watch import SourceWatch
from operators.windowing import SlidingWindower
from schemas import DeadLetter, DriftEvent, ModelSnapshot, SchemaError
from settings import Config
from stream_jobs.flink_env import JobRun, keyed_by_first_field, make_env, parse_job_args, quiet_embedded_logging
from stream_jobs.kafka_io import (
    CHECKPOINT_MARK,
    DEAD_LETTERS,
    dead_letter_record,
    keyed_source,
    now_ms,
    routed,
    routed_sink,
    split_envelope,
    unpack_group,
    unpack_shard_group,
)
from stream_jobs.source_probe import KafkaRecordProbe, SourceWatchThread, report

log = logging.getLogger(__name__)
SHARDED_MIN_SHARDS = 8
OUTPUTS_MS = 5  # while batches are being scored on the scoring thread, their outputs go out within about this
STATS_EVERY_S = 1.0  # with --stats-file: the model's cumulative numbers, a line a second (benchmarks)


def device_intake(cfg: Config, models: list[ServedModel]) -> DeviceIntake:
    """The serving job's intake: a parser and windower (and per-device normaliser) per served model."""
    s, topics = cfg.serving, cfg.topics
    named = len(models) > 1  # dead letters name the model when there is a choice
    parser = RoutedParser(
        {m.name: ReadingParser(m.channels, topics.readings, s.max_message_bytes, s.max_abs_value,
                               s.max_future_ms, m.name if named else None, s.max_block_samples)
         for m in models},
        DeviceRouter.for_config(cfg))
    windowers = {m.name: SlidingWindower(m.window, m.stride, len(m.channels), s.max_out_of_order_ms,
                                         s.max_seq_gap_buffer, s.reset_gap_ms, s.seq_gap_timeout_ms,
                                         s.max_seq_jump) for m in models}
    normalisers = ({m.name: DeviceNormaliser(s.device_normalisation_windows, s.device_normalisation_halflife)
                    for m in models} if s.device_normalisation_windows else None)
    return DeviceIntake(parser, windowers, cfg.registry.model_name, s.device_expiry_ms, normalisers)


def source_watch(cfg: Config, group) -> tuple[SourceWatch, SourceWatchThread | None]:
    """The readings source's watch (offsets going back, records gone) with its gauges on ``group``."""
    watch = SourceWatch(cfg.topics.readings)
    group.gauge("source_resets", lambda: watch.resets)
    group.gauge("source_stalled_partitions", watch.stalled_partitions)
    watcher = None
    if cfg.serving.source_check_ms > 0:
        watcher = SourceWatchThread(watch, KafkaRecordProbe(cfg.broker.bootstrap, cfg.topics.readings),
                                    cfg.serving.source_check_ms / 1000).start()
    return watch, watcher


class ReadingsToWindows(KeyedProcessFunction):
    """Validate each record and cut per-device sliding windows, in one keyed operator.

    The stream is keyed in Java by the payload's ``device_id`` (``JsonKeyedDeserializer``), and a device's
    messages are grouped there (``ReadingGrouper``, ``serving.group_readings`` / ``group_ms``), so a group
    crosses into Python once, with one read and one write of the device's state. With several served
    models, each reading's device type (or device id pattern) picks the model whose channels, window and
    stride apply. Bad records become dead letters with their partition and offset; window state lives in
    Flink keyed state (checkpointed).
    """

    def __init__(self, cfg: Config, models: list[ServedModel], shards: int) -> None:
        self.cfg, self.models, self.shards = cfg, models, shards

    def _to_shard(self, windows) -> Row:
        """Windows as ``Row(inference shard, windows)``, keyed in Java (``keyed_by_first_field``)."""
        return Row(shard_of((windows[0] if isinstance(windows, list) else windows).device_id, self.shards), windows)

    def open(self, runtime_context: RuntimeContext) -> None:
        quiet_embedded_logging()
        self.intake = device_intake(self.cfg, self.models)
        self.windowers = self.intake.windowers
        self.state = runtime_context.get_state(ValueStateDescriptor("device", Types.PICKLED_BYTE_ARRAY()))
        group = runtime_context.get_metrics_group()
        self.readings_in = group.counter("readings_in")
        # records that crossed into Python: a group of one device's messages (ReadingGrouper) counts once
        self.groups_in = group.counter("groups_in")
        self.samples = 0  # readings_in counts messages; a sample block adds its samples here (a gauge: no call per reading)
        group.gauge("samples_in", lambda: self.samples)
        self.dead = group.counter("dead_letters")
        self.windows_out = group.counter("windows")
        self.late = group.counter("late_readings")
        self.expired = group.counter("devices_expired")
        self.watch, self.watcher = source_watch(self.cfg, group)

    def close(self) -> None:
        if getattr(self, "watcher", None) is not None:
            self.watcher.stop()

    def _dead_letter(self, letter: DeadLetter):
        self.dead.inc()
        return DEAD_LETTERS, dead_letter_record(self.cfg.topics.dead_letters, letter)

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        """One message of a device, or a group of its messages (``ReadingGrouper``): each is validated and
        windowed in order as if it came alone (``DeviceIntake``), with one state read and write and one record
        for all the windows they complete."""
        now = ctx.timer_service().current_processing_time()
        messages = []
        for i, envelope in enumerate(unpack_group(value)):
            _, partition, offset, ingest_ms, payload = split_envelope(envelope)
            if i == 0:  # groups keep the offset order of their first messages only (ReadingGrouper)
                went_back = self.watch.see(partition, offset)
                if went_back is not None:
                    report(went_back)
            messages.append(Message(partition, offset, ingest_ms, payload))
        self.readings_in.inc(len(messages))
        self.groups_in.inc()
        out = self.intake.take(ctx.get_current_key(), messages, self.state.value(), now)
        self.samples += out.samples
        if out.late:
            self.late.inc(out.late)
        for letter in out.dead_letters:
            yield self._dead_letter(letter)
        if not out.changed:
            return
        state = out.state
        expiry_check = SlidingWindower.touch(state, now, self.cfg.serving.device_expiry_ms)
        self.state.update(state)
        if expiry_check is not None:
            ctx.timer_service().register_processing_time_timer(expiry_check)
        windows = out.windows
        if windows:
            self.windows_out.inc(len(windows))
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
            self.expired.inc()
            return
        if not state.pending:
            return
        if not windower.idle(state, now, IDLE_FLUSH_MS):
            ctx.timer_service().register_processing_time_timer(timestamp + IDLE_FLUSH_MS)
            return
        windows = self.intake.with_stats(state, windower.flush(state), model)
        self.state.update(state)
        for window in windows:
            self.windows_out.inc()
            yield self._to_shard(window)


class ServeShards(KeyedCoProcessFunction):
    """The sharded layout's one Python operator, keyed by shard: a shard's grouped messages of many devices on
    the first input (``ReadingGrouper`` with shards), announcements and drift events on the second.

    ``operators.shard_serving.ShardServing`` validates, windows and scores; each shard's device states are
    held in memory and written to the ``devices`` map state (device id -> window state) when the grouper's
    marker before a checkpoint barrier comes, and pending windows are scored then, so a checkpoint holds
    every device's state and no pending window. Sweeps on timers (expiry, held readings of idle devices)
    write their changes at once."""

    def __init__(self, cfg: Config, models: list[ServedModel], shards: int, stats_file: str = "") -> None:
        self.cfg, self.models, self.shard_count, self.stats_file = cfg, models, shards, stats_file

    def open(self, runtime_context: RuntimeContext) -> None:
        quiet_embedded_logging()
        group = runtime_context.get_metrics_group()
        self.inference = open_inference_shards(self.cfg, self.models, self.stats_file, group)
        self.serving = ShardServing(device_intake(self.cfg, self.models), self.inference,
                                    self.cfg.serving.device_expiry_ms, IDLE_FLUSH_MS, threaded=True)
        self.versions = ServedVersions(runtime_context, self.inference)
        self.devices = runtime_context.get_map_state(
            MapStateDescriptor("devices", Types.STRING(), Types.PICKLED_BYTE_ARRAY()))
        self.tables: dict[int, DeviceTable] = {}
        self.next_timer: int | None = None  # the earliest timer set for batches and outputs (any shard's key)
        self.readings_in = group.counter("readings_in")
        self.groups_in = group.counter("groups_in")  # records of messages that crossed into Python (markers aside)
        self.samples = 0
        group.gauge("samples_in", lambda: self.samples)
        self.dead = group.counter("dead_letters")
        self.windows_out = group.counter("windows")
        self.late = group.counter("late_readings")
        self.expired = group.counter("devices_expired")
        self.orphaned = group.counter("devices_orphaned")
        self.watch, self.watcher = source_watch(self.cfg, group)
        self.next_report = time.monotonic() + STATS_EVERY_S

    def close(self) -> None:
        if getattr(self, "watcher", None) is not None:
            self.watcher.stop()
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
        if time.monotonic() >= self.next_report:
            self.next_report = time.monotonic() + STATS_EVERY_S
            for shard in self.inference.values():
                shard.report()
        return map(routed, outgoing)

    def _schedule(self, ctx, now: int) -> None:
        """A timer for the earliest due batch, or soon while batches are being scored (their outputs go out on
        the next record or this timer)."""
        due = self.serving.due_at()
        if self.serving.busy():
            due = min(due, now + OUTPUTS_MS) if due is not None else now + OUTPUTS_MS
        if due is not None and (self.next_timer is None or due < self.next_timer):
            self.next_timer = due
            ctx.timer_service().register_processing_time_timer(due)

    def _dead_letter(self, letter: DeadLetter):
        self.dead.inc()
        return DEAD_LETTERS, dead_letter_record(self.cfg.topics.dead_letters, letter)

    def process_element1(self, value, ctx: KeyedCoProcessFunction.Context):
        """A shard's group of messages, or the marker before a checkpoint barrier."""
        self.versions.check_restored()
        timers = ctx.timer_service()
        now = timers.current_processing_time()
        table = self._table(ctx.get_current_key(), ctx)
        if value == CHECKPOINT_MARK:  # the checkpoint holds every device's state and no window waits across it
            self._store(table)
            yield from self._emit(self.serving.flush(now) + self.serving.drain())
            return
        records = []
        for device, envelope in unpack_shard_group(value):
            _, partition, offset, ingest_ms, payload = split_envelope(envelope)
            if not records:  # groups keep the offset order of their first messages (ReadingGrouper)
                went_back = self.watch.see(partition, offset)
                if went_back is not None:
                    report(went_back)
            records.append((device, Message(partition, offset, ingest_ms, payload)))
        served = self.serving.take(table, records, now)
        self.readings_in.inc(served.messages)
        self.groups_in.inc()
        self.samples += served.samples
        if served.late:
            self.late.inc(served.late)
        if served.windows:
            self.windows_out.inc(served.windows)
        for letter in served.dead_letters:
            yield self._dead_letter(letter)
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
                self.expired.inc(served.expired)
            if served.windows:
                self.windows_out.inc(served.windows)
            yield from self._emit(served.outgoing)
            if served.sweep_at is not None:
                ctx.timer_service().register_processing_time_timer(served.sweep_at)
        yield from self._emit(self.serving.poll(now) + self.serving.collect())
        self._schedule(ctx, now)


class FanOutControls(KeyedProcessFunction):
    """Validates ``model-snapshots`` and ``drift-events`` messages and sends each to every inference shard."""

    def __init__(self, cfg: Config, shards: int) -> None:
        self.topics, self.shards = cfg.topics, shards

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        topic, partition, offset, _, payload = split_envelope(value)
        contract = DriftEvent if topic == self.topics.drift_events else ModelSnapshot
        try:
            message = contract.decode(payload)
        except SchemaError as exc:
            letter = DeadLetter(topic, partition, offset, str(exc), raw_text(payload), exc.field, "control",
                                now_ms())
            yield DEAD_LETTERS, dead_letter_record(self.topics.dead_letters, letter)
            return
        for shard in range(self.shards):
            yield ControlMessage(shard, message, partition, offset)


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


def starting_model(cfg: Config, name: str, primary: bool):
    """The version ``name`` starts serving with, and why newer versions were passed over."""
    s, registry, precision = cfg.serving, cfg.registry, cfg.precision_of(name)
    if primary and s.model_version:  # pinned: that version or nothing
        return load_from_registry(registry.path, name, s.model_version, s.runtime, s.device, s.inference_threads,
                                  precision), []
    if cfg.models.get(name) is not None and not ModelRegistry(registry.path).versions(name):
        log.warning("cold start: %s has no trained version yet; every window goes to review until "
                    "the learning job publishes v1", name)
        return untrained_model(name, ModelSpec.from_dict(cfg.declared_spec(name))), []
    return load_newest_usable(registry.path, name, s.runtime, s.device, s.inference_threads, precision)


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
        self.next_report = time.monotonic() + STATS_EVERY_S

    def _check_restored(self) -> None:
        self.versions.check_restored()

    def _emit(self, outgoing):
        if time.monotonic() >= self.next_report:
            self.next_report = time.monotonic() + STATS_EVERY_S
            for shard in self.shards.values():
                shard.report()
        return map(routed, outgoing)

    def process_element1(self, window, ctx: KeyedCoProcessFunction.Context):
        """A window, or the list of windows one sample block completed."""
        self._check_restored()
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
        self._check_restored()
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


def _suffix(i: int, name: str) -> str:
    """What tells a model's state apart: the first served model keeps the unsuffixed names of one-model jobs."""
    return "" if i == 0 else f"-{name}"


def open_inference_shards(cfg: Config, models: list[ServedModel], stats_file: str, group) -> dict[str, InferenceShard]:
    """An ``InferenceShard`` per served model, serving the version it starts with, and their gauges on ``group``."""
    s, registry = cfg.serving, cfg.registry
    verifier = AnnouncementVerifier.load(registry.verify_key) if registry.verify_key else None
    shards: dict[str, InferenceShard] = {}
    unusable = 0
    for served in models:
        name = served.name
        model, passed_over = starting_model(cfg, name, name == registry.model_name)
        for reason in passed_over:
            log.error("serving %s v%d: a newer version cannot be served: %s", name, model.version, reason)
        unusable += len(passed_over)
        mismatch = input_mismatch(model.spec, served.window, served.channels)
        if mismatch:  # build_serving_job checked the same; the registry changed in between
            raise ArtifactError(f"{name} v{model.version} cannot serve: {mismatch}")
        settings = replace(s, window=served.window, stride=served.stride)
        shards[name] = InferenceShard(settings, name, cfg.topics, model,
                                      lambda snap, settings=settings, precision=cfg.precision_of(name): load_snapshot(
                                          snap, settings.runtime, settings.device, settings.inference_threads,
                                          registry.path, verifier, precision),
                                      stats_file)
        if len(models) > 1:  # per model: flink_..._operator_model_<metric>{model="<name>"}
            _shard_gauges(group.add_group("model", name), [shards[name]])
    gc.collect()
    gc.freeze()  # the loaded libraries and models stay out of the collector's way on the hot path
    _shard_gauges(group, list(shards.values()))
    group.gauge("model_versions_unusable", lambda: unusable)
    return shards


class ServedVersions:
    """The announcements a key (an inference shard) accepted and the version in its shadow phase, per model,
    in keyed state: a restored job serves and shadows the same versions (``check_restored``)."""

    def __init__(self, runtime_context: RuntimeContext, shards: dict[str, InferenceShard]) -> None:
        self.shards = shards
        self.accepted, self.shadowed = {}, {}
        for i, name in enumerate(shards):
            self.accepted[name] = runtime_context.get_state(
                ValueStateDescriptor("accepted" + _suffix(i, name), Types.PICKLED_BYTE_ARRAY()))
            self.shadowed[name] = runtime_context.get_state(
                ValueStateDescriptor("shadow" + _suffix(i, name), Types.PICKLED_BYTE_ARRAY()))
        self.restore_checked = False

    def check_restored(self) -> None:
        """Once after a (re)start, under the first key seen: serve the versions it had accepted."""
        if not self.restore_checked:
            self.restore_checked = True
            for name, shard in self.shards.items():
                restored = self.accepted[name].value()
                if restored is not None:
                    shard.swap(restored)
                shadow = self.shadowed[name].value()
                if shadow is not None:
                    shard.shadow_stage(shadow)

    def keep(self, name: str, accepted: ModelSnapshot | None, shadow: ModelSnapshot | None, shadow_changed: bool) -> None:
        """Under the current key: the snapshot now served (None: unchanged) and the shadow (if it changed)."""
        if accepted is not None:
            self.accepted[name].update(accepted)
        if shadow_changed:
            if shadow is None:
                self.shadowed[name].clear()
            else:
                self.shadowed[name].update(shadow)


def _shard_gauges(group, shards: list[InferenceShard]) -> None:
    """The shards' tallies as gauges on ``group``: counts summed, the latest batch's figures of the first."""
    for name in ("predictions", "review_requests", "batches", "model_swaps", "model_refused",
                 "confidence_drifts", "inference_us_total", "unscored_windows", "anomalies", "forecasts", "unlabeled_windows"):
        group.gauge(name, lambda name=name: int(sum(getattr(s.tally, name) for s in shards)))
    group.gauge("batch_size", lambda: max(s.tally.last_batch_size for s in shards))
    group.gauge("inference_ms", lambda: int(round(max(s.tally.last_inference_ms for s in shards))))
    group.gauge("model_version", lambda: int(shards[0].model.version))
    group.gauge("reviews_over_share", lambda: sum(s.scorer.router.over_share for s in shards))


def inference_shard_count(cfg: Config) -> int:
    """``serving.inference_shards``, else: the parallelism (``per_device`` layout), or at least
    ``SHARDED_MIN_SHARDS`` (``sharded``: device states live under their shard, so the count is kept
    across rescales up to it)."""
    if cfg.serving.inference_shards:
        return cfg.serving.inference_shards
    parallelism = max(1, cfg.flink.parallelism)
    return max(SHARDED_MIN_SHARDS, parallelism) if cfg.serving.layout == "sharded" else parallelism


def build_serving_job(env, cfg: Config, run: JobRun = JobRun()) -> None:
    """Add the serving pipeline to ``env``."""
    topics, group_id = cfg.topics, run.group_id or "sensorloop-serving"
    if cfg.registry.verify_key:
        try:
            AnnouncementVerifier.load(cfg.registry.verify_key)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"sensorloop serving job: registry.verify_key {cfg.registry.verify_key}: {exc}") from None
    try:
        models = served_models(cfg)
    except ValueError as exc:
        raise SystemExit(f"sensorloop serving job: {exc} (serving.window = {cfg.serving.window})") from None
    shards = inference_shard_count(cfg)
    sharded = cfg.serving.layout == "sharded"
    readings = keyed_source(env, cfg.broker.bootstrap, [topics.readings], group_id, "sensor-readings", "device_id",
                            group=(cfg.serving.group_readings, cfg.serving.group_ms), shards=shards if sharded else 0)
    announcements = keyed_source(env, cfg.broker.bootstrap, [topics.model_snapshots, topics.drift_events],
                                 f"{group_id}-controls", "model-snapshots-and-drift-events", "model_name")
    controls = (announcements.process(FanOutControls(cfg, shards), output_type=Types.PICKLED_BYTE_ARRAY())
                .name("model-announcements").uid("model-announcements"))
    controls_by_shard = controls.key_by(lambda c: c.shard, key_type=Types.INT())
    if sharded:
        scored = (readings.connect(controls_by_shard)
                  .process(ServeShards(cfg, models, shards, run.stats_file), output_type=Types.STRING())
                  .name("serve-shards").uid("serve-shards"))
        dead = [scored.get_side_output(DEAD_LETTERS)]
    else:
        windows = (readings.process(ReadingsToWindows(cfg, models, shards),
                                    output_type=Types.ROW([Types.INT(), Types.PICKLED_BYTE_ARRAY()]))
                   .name("parse-and-window").uid("parse-and-window"))
        by_shard = keyed_by_first_field(windows, Types.INT(), Types.PICKLED_BYTE_ARRAY())
        scored = (by_shard.connect(controls_by_shard)
                  .process(InferBatches(cfg, models, run.stats_file), output_type=Types.STRING())
                  .name("inference").uid("inference"))
        dead = [windows.get_side_output(DEAD_LETTERS)]
    out = scored.union(*dead, controls.get_side_output(DEAD_LETTERS))
    out.sink_to(routed_sink(cfg.broker.bootstrap, cfg.flink.exactly_once, f"{group_id}-tx")).name(
        "kafka-out").uid("kafka-out")


def main(argv: list[str] | None = None) -> None:
    cfg, run = parse_job_args("serving", argv)
    env = make_env(cfg, "serving", run)
    build_serving_job(env, cfg, run)
    env.execute("sensorloop-serving")


if __name__ == "__main__":
    main()
