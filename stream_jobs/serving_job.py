"""The serving job: sensor-readings → parse → per-device windows → micro-batched inference →
predictions, review requests and dead letters.

Run: ``python -m stream_jobs.serving_job --bootstrap HOST:PORT`` (the CLI wraps this).
"""

from __future__ import annotations

import argparse
import gc
import logging
import time
import zlib
from dataclasses import fields

import orjson
from pyflink.common import Types
from pyflink.datastream import KeyedCoProcessFunction, KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from model.registry import ArtifactError
from operators.batching import BatchPolicy
from operators.config import ServingConfig
from operators.confidence_watch import ConfidenceWatch
from operators.inference import WindowScorer
from operators.parse import ReadingParser, raw_text
from operators.routing import ReviewRouter, boosted_budget
from operators.serving_model import ControlMessage, load_from_registry, load_snapshot
from operators.windowing import SlidingWindower
from schemas import DeadLetter, DriftEvent, ModelSnapshot, SchemaError, Topics
from stream_jobs.flink_env import FlinkSettings, make_env
from stream_jobs.kafka_io import keyed_source, now_ms, route, route_dead_letter, routed_sink, split_envelope

log = logging.getLogger(__name__)
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
IDLE_FLUSH_MS = 2_000
STATS_EVERY_S = 5.0


class ReadingsToWindows(KeyedProcessFunction):
    """Validate each record and cut per-device sliding windows, in one keyed operator.

    The stream is keyed in Java by the payload's ``device_id`` (``DeviceKeyedDeserializer``),
    so each reading crosses into Python once. Bad records become dead letters with their
    partition and offset; window state lives in Flink keyed state (checkpointed).
    """

    def __init__(self, cfg: ServingConfig, topics: Topics, channels: list[str]) -> None:
        self.cfg, self.topics, self.channels = cfg, topics, channels

    def open(self, runtime_context: RuntimeContext) -> None:
        cfg = self.cfg
        self.parser = ReadingParser(self.channels, self.topics.readings, cfg.max_message_bytes)
        self.windower = SlidingWindower(cfg.window, cfg.stride, len(self.channels), cfg.max_out_of_order_ms,
                                        cfg.max_seq_gap_buffer, cfg.reset_gap_ms, cfg.seq_gap_timeout_ms)
        self.state = runtime_context.get_state(ValueStateDescriptor("device", Types.PICKLED_BYTE_ARRAY()))
        group = runtime_context.get_metrics_group()
        self.readings_in = group.counter("readings_in")
        self.dead = group.counter("dead_letters")
        self.windows_out = group.counter("windows")
        self.late = group.counter("late_readings")

    def _dead_letter(self, letter: DeadLetter):
        self.dead.inc()
        return DEAD_LETTERS, route_dead_letter(self.topics.dead_letters, letter)

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        _, partition, offset, ingest_ms, payload = split_envelope(value)
        self.readings_in.inc()
        reading = self.parser.parse(payload, partition, offset)
        if isinstance(reading, DeadLetter):
            yield self._dead_letter(reading)
            return
        if reading.device_id != ctx.get_current_key():  # e.g. a duplicated "device_id" field
            yield self._dead_letter(self.parser.dead_letter(payload, partition, offset,
                                                            "device_id: ambiguous (appears more than once)",
                                                            "device_id"))
            return
        state = self.state.value() or self.windower.new_state()
        windows, rejections = self.windower.add(state, reading, ingest_ms)
        self.state.update(state)
        for window in windows:
            self.windows_out.inc()
            yield window
        for rejection in rejections:
            self.late.inc()
            yield self._dead_letter(self.parser.dead_letter(payload, partition, offset, rejection.reason,
                                                            "seq" if reading.seq is not None else "ts", "window"))
        if state.pending:
            ctx.timer_service().register_processing_time_timer(
                ctx.timer_service().current_processing_time() + IDLE_FLUSH_MS)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        state = self.state.value()
        if state is None or not state.pending:
            return
        newest_ingest = max(item[4] for item in state.pending)
        if now_ms() - newest_ingest < IDLE_FLUSH_MS:
            ctx.timer_service().register_processing_time_timer(timestamp + IDLE_FLUSH_MS)
            return
        windows = self.windower.flush(state)
        self.state.update(state)
        for window in windows:
            self.windows_out.inc()
            yield window


class FanOutControls(KeyedProcessFunction):
    """Validates ``model-snapshots`` and ``drift-events`` messages and sends each to every inference shard."""

    def __init__(self, topics: Topics, shards: int) -> None:
        self.topics, self.shards = topics, shards

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        topic, partition, offset, _, payload = split_envelope(value)
        contract = DriftEvent if topic == self.topics.drift_events else ModelSnapshot
        try:
            message = contract.decode(payload)
        except SchemaError as exc:
            letter = DeadLetter(topic, partition, offset, str(exc), raw_text(payload), exc.field, "control",
                                now_ms())
            yield DEAD_LETTERS, route_dead_letter(self.topics.dead_letters, letter)
            return
        for shard in range(self.shards):
            yield ControlMessage(shard, message, partition, offset)


class InferBatches(KeyedCoProcessFunction):
    """Micro-batches windows across devices (pending ones in checkpointed list state) and
    scores each batch; flushes on batch size or after ``max_wait_ms``.

    Windows come on the first input, keyed by inference shard; model announcements and drift
    events on the second, keyed the same way. Each input is keyed right after the operator
    that makes it, so the key selector runs chained inside that Python operator and a window
    is pickled once on its way here. On an announcement, pending windows are scored with the
    old model, then the new version is verified (sha256, smoke inference) and swapped in; a
    refused one is reported on ``dead-letters`` and the old model keeps serving. The accepted
    announcement is kept in keyed state, so a restored job serves the same version.
    """

    def __init__(self, cfg: ServingConfig, topics: Topics) -> None:
        self.cfg, self.topics = cfg, topics

    def open(self, runtime_context: RuntimeContext) -> None:
        cfg = self.cfg
        model = load_from_registry(cfg.registry, cfg.model_name, cfg.model_version or None, cfg.runtime,
                                   cfg.device, cfg.inference_threads)
        self.scorer = WindowScorer(model, ReviewRouter(cfg.confidence_threshold, cfg.audit_rate,
                                                       cfg.review_budget_per_minute))
        gc.collect()
        gc.freeze()  # the loaded libraries and model stay out of the collector's way on the hot path
        self.policy = BatchPolicy(cfg.max_batch, cfg.max_wait_ms)
        self.watch = (ConfidenceWatch(cfg.model_name, cfg.confidence_drift_delta,
                                      boost_budget_per_minute=cfg.drift_budget_per_minute,
                                      boost_seconds=cfg.drift_boost_seconds) if cfg.confidence_drift_delta else None)
        self.pending = runtime_context.get_list_state(ListStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY()))
        self.count = runtime_context.get_state(ValueStateDescriptor("count", Types.INT()))
        self.oldest = runtime_context.get_state(ValueStateDescriptor("oldest", Types.LONG()))
        self.accepted = runtime_context.get_state(ValueStateDescriptor("accepted", Types.PICKLED_BYTE_ARRAY()))
        self.restore_checked = False
        self.boost_until: int | None = None
        group = runtime_context.get_metrics_group()
        self.predictions = group.counter("predictions")
        self.reviews = group.counter("review_requests")
        self.swaps = group.counter("model_swaps")
        self.refused = group.counter("model_refused")
        self.batches = group.counter("batches")
        self.confidence_drifts = group.counter("confidence_drifts")
        self.inference_us = group.counter("inference_us_total")  # model time; / batches = mean per batch
        self.last_batch = (0, 0.0)  # (windows, model ms) of the latest micro-batch
        group.gauge("batch_size", lambda: self.last_batch[0])
        group.gauge("inference_ms", lambda: int(round(self.last_batch[1])))
        group.gauge("model_version", lambda: int(self.scorer.model.version))
        self.next_report = time.monotonic() + STATS_EVERY_S

    def _check_restored(self):
        """Once per shard after a (re)start: serve the version this shard had accepted."""
        if not self.restore_checked:
            self.restore_checked = True
            restored = self.accepted.value()
            if restored is not None and restored.version != self.scorer.model.version:
                yield from self._swap(restored, None)

    def process_element2(self, control: ControlMessage, ctx: KeyedCoProcessFunction.Context):
        now = ctx.timer_service().current_processing_time()
        yield from self._check_restored()
        if isinstance(control.message, DriftEvent):
            self._boost(control.message, now)
            return
        if self.count.value():
            yield from self._flush(now)  # windows that came first are scored by the old model
        yield from self._swap(control.message, control)

    def process_element1(self, window, ctx: KeyedCoProcessFunction.Context):
        now = ctx.timer_service().current_processing_time()
        yield from self._check_restored()
        self.pending.add(window)
        count = (self.count.value() or 0) + 1
        oldest = self.oldest.value()
        if oldest is None:
            oldest = now
            self.oldest.update(now)
        if self.policy.should_flush(count, oldest, now):
            yield from self._flush(now)
        else:
            self.count.update(count)
            ctx.timer_service().register_processing_time_timer(self.policy.deadline(oldest))

    def on_timer(self, timestamp: int, ctx: KeyedCoProcessFunction.OnTimerContext):
        now = ctx.timer_service().current_processing_time()
        count = self.count.value() or 0
        if count and self.policy.should_flush(count, self.oldest.value(), now):
            yield from self._flush(now)

    def _flush(self, now: int):
        if self.boost_until is not None and now >= self.boost_until:
            self.scorer.router.set_budget(self.cfg.review_budget_per_minute)
            self.boost_until = None
        windows = list(self.pending.get())
        self.pending.clear()
        self.count.clear()
        self.oldest.clear()
        model_s = self.scorer.stats.inference_s
        predictions, reviews = self.scorer.score(windows, now)
        model_s = self.scorer.stats.inference_s - model_s
        self.last_batch = (len(windows), model_s * 1000.0)
        self.batches.inc()
        self.inference_us.inc(int(model_s * 1e6))
        self.predictions.inc(len(predictions))
        self.reviews.inc(len(reviews))
        for p in predictions:
            yield route(self.topics.predictions, p.device_id, p.encode())
        for r in reviews:
            yield route(self.topics.review_requests, r.review_id, r.encode())
        if self.watch is not None and predictions:
            event = self.watch.observe([p.confidence for p in predictions], self.scorer.model.version, now)
            if event is not None:  # more labels where the model is unsure; operators see it on drift-events
                self._boost(event, now)
                self.confidence_drifts.inc()
                yield route(self.topics.drift_events, self.cfg.model_name, event.encode())
        if time.monotonic() >= self.next_report:
            self.next_report = time.monotonic() + STATS_EVERY_S
            self.report()

    def _boost(self, event: DriftEvent, now: int) -> None:
        """After a drift, more windows go to review for a while (never fewer than the configured budget)."""
        if event.model_name != self.cfg.model_name:
            return
        budget = boosted_budget(self.cfg.review_budget_per_minute, event.boost_budget_per_minute)
        self.scorer.router.set_budget(budget)
        self.boost_until = now + event.boost_seconds * 1000
        log.info("drift (%s): review budget %d/min for %d s", event.signal, budget, event.boost_seconds)

    def _swap(self, snapshot: ModelSnapshot, control: ControlMessage | None):
        if snapshot.model_name != self.cfg.model_name:
            return
        try:
            model = load_snapshot(snapshot, self.cfg.runtime, self.cfg.device, self.cfg.inference_threads)
        except ArtifactError as exc:
            self.refused.inc()
            log.warning("refused %s v%d: %s", snapshot.model_name, snapshot.version, exc)
            if control is not None and control.shard == 0:  # one report per announcement
                letter = DeadLetter(self.topics.model_snapshots, control.partition, control.offset,
                                    f"refused {snapshot.model_name} v{snapshot.version}, still serving "
                                    f"v{self.scorer.model.version}: {exc}", raw_text(snapshot.encode()),
                                    "artifact_uri", "snapshot", now_ms())
                yield route_dead_letter(self.topics.dead_letters, letter)
            return
        self.scorer.swap(model)
        if self.watch is not None:
            self.watch.reset()  # the new model has its own confidence level
        self.accepted.update(snapshot)
        self.swaps.inc()
        log.info("now serving %s v%d", model.name, model.version)

    def report(self) -> None:
        """Append the model's own throughput inside the job to ``stats_file`` (if set)."""
        s = self.scorer.stats
        if s.batches and self.cfg.stats_file:
            with open(self.cfg.stats_file, "a") as fh:
                fh.write(orjson.dumps({"at": time.time(), "windows": s.windows, "batches": s.batches,
                                       "model_seconds": s.inference_s, "model_cpu_seconds": s.inference_cpu_s,
                                       "model_runqueue_seconds": s.inference_runqueue_s,
                                       "provider": self.scorer.model.provider}).decode() + "\n")

    def close(self) -> None:
        if hasattr(self, "scorer"):
            self.report()


def shard_of(device_id: str, shards: int) -> int:
    """Inference shard of a device (one micro-batcher per shard)."""
    return zlib.crc32(device_id.encode()) % shards


def build_serving_job(env, bootstrap: str, cfg: ServingConfig, topics: Topics, settings: FlinkSettings,
                      group_id: str = "sensorloop-serving") -> None:
    """Add the serving pipeline to ``env``."""
    from model.registry import ModelRegistry

    channels = list(ModelRegistry(cfg.registry).latest_metadata(cfg.model_name).spec["channels"])
    shards = max(1, settings.parallelism)
    readings = keyed_source(env, bootstrap, [topics.readings], group_id, "sensor-readings", "device_id")
    windows = (readings.process(ReadingsToWindows(cfg, topics, channels), output_type=Types.PICKLED_BYTE_ARRAY())
               .name("parse-and-window").uid("parse-and-window"))
    announcements = keyed_source(env, bootstrap, [topics.model_snapshots, topics.drift_events],
                                 f"{group_id}-controls", "model-snapshots-and-drift-events", "model_name")
    controls = (announcements.process(FanOutControls(topics, shards), output_type=Types.PICKLED_BYTE_ARRAY())
                .name("model-announcements").uid("model-announcements"))
    by_shard = windows.key_by(lambda w: shard_of(w.device_id, shards), key_type=Types.INT())
    controls_by_shard = controls.key_by(lambda c: c.shard, key_type=Types.INT())
    scored = (by_shard.connect(controls_by_shard)
              .process(InferBatches(cfg, topics), output_type=Types.STRING()).name("inference").uid("inference"))
    out = scored.union(windows.get_side_output(DEAD_LETTERS), controls.get_side_output(DEAD_LETTERS))
    out.sink_to(routed_sink(bootstrap, settings.exactly_once, f"{group_id}-tx")).name("kafka-out").uid("kafka-out")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of a settings dataclass."""
    for f in fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=default)
        else:
            parser.add_argument(flag, type=type(default) if default is not None else str, default=default)


def config_from_args(args: argparse.Namespace, config_cls, skip: tuple[str, ...] = ()):
    return config_cls(**{f.name: getattr(args, f.name) for f in fields(config_cls) if f.name not in skip})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run the sensorloop serving job on Flink")
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--group-id", default="sensorloop-serving")
    parser.add_argument("--jars", default=None, help="folder holding the two Flink Kafka connector jars")
    add_config_arguments(parser, ServingConfig)
    add_config_arguments(parser, FlinkSettings)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args, ServingConfig)
    settings = config_from_args(args, FlinkSettings)
    env = make_env(settings, args.jars)
    build_serving_job(env, args.bootstrap, cfg, Topics.from_env(), settings, args.group_id)
    env.execute("sensorloop-serving")


if __name__ == "__main__":
    main()
