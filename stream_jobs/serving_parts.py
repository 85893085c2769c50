"""What both layouts of the serving job share: the intake, the source watch, the inference shards with the
versions they start with and the versions accepted (keyed state), their gauges, and how outputs leave."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import replace

from pyflink.common import Types
from pyflink.datastream import RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from model.registry import ArtifactError, ModelRegistry
from model.spec import ModelSpec
from model.signing import AnnouncementVerifier
from operators.device_intake import DeviceIntake, Message
from operators.device_normalisation import DeviceNormaliser
from operators.model_routing import DeviceRouter, ServedModel
from operators.parse import ReadingParser, RoutedParser
from operators.serving_model import (
    input_mismatch,
    load_from_registry,
    load_newest_usable,
    load_snapshot,
    untrained_model,
)
from operators.serving_shard import InferenceShard
from operators.source_watch import SourceWatch
from operators.windowing import SlidingWindower
from schemas import DeadLetter, ModelSnapshot
from settings import Config
from stream_jobs.kafka_io import DEAD_LETTERS, dead_letter_record, packed, split_envelope
from stream_jobs.source_probe import KafkaRecordProbe, SourceWatchThread, report

log = logging.getLogger(__name__)
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


class LocalCounter:
    """A counter kept in Python that Flink reads as a gauge under the same name (Prometheus shows a Flink
    counter as a gauge too): ``inc`` stays in Python, where a Flink counter's calls into Java each time."""

    def __init__(self, group, name: str) -> None:
        self.count = 0
        group.gauge(name, lambda: self.count)

    def inc(self, n: int = 1) -> None:
        self.count += n


class IntakeCounts:
    """What both layouts do with the readings records that cross into Python, beside validating and windowing
    them: split them into messages, check the source's offsets (``SourceWatch``: offsets going back, records
    gone), count them under the same metric names, and turn bad input into dead letters."""

    def __init__(self, cfg: Config, group, group_id: str | None = None, subtask: int = 0) -> None:
        """``group_id``: the job's consumer group; the first ``subtask``'s watch also checks the offsets the group
        committed on partitions it has not read (a job restored after the broker lost the topic)."""
        self.dead_letters_topic = cfg.topics.dead_letters
        self.readings_in = LocalCounter(group, "readings_in")
        self.groups_in = LocalCounter(group, "groups_in")  # records that crossed into Python: a group counts once
        self.samples = LocalCounter(group, "samples_in")  # samples of the messages counted in readings_in
        self.dead = LocalCounter(group, "dead_letters")
        self.windows = LocalCounter(group, "windows")
        self.late = LocalCounter(group, "late_readings")
        self.expired = LocalCounter(group, "devices_expired")
        self.watch = SourceWatch(cfg.topics.readings)
        group.gauge("source_resets", lambda: self.watch.resets)
        group.gauge("source_stalled_partitions", self.watch.stalled_partitions)
        self.watcher = None
        if cfg.serving.source_check_ms > 0:
            probe = KafkaRecordProbe(cfg.broker.bootstrap, cfg.topics.readings,
                                     group_id=group_id if subtask == 0 else None)
            self.watcher = SourceWatchThread(self.watch, probe, cfg.serving.source_check_ms / 1000).start()

    def messages(self, envelopes: list[bytes]) -> list[Message]:
        """The messages of one record (a group, or one message), counted. A group keeps the offset order of
        its first messages only (``ReadingGrouper``), so the first one's offset is what the watch checks."""
        messages = []
        for envelope in envelopes:
            _, partition, offset, ingest_ms, payload = split_envelope(envelope)
            if not messages:
                went_back = self.watch.see(partition, offset)
                if went_back is not None:
                    report(went_back)
            messages.append(Message(partition, offset, ingest_ms, payload))
        self.readings_in.inc(len(messages))
        self.groups_in.inc()
        return messages

    def took(self, samples: int, late: int) -> None:
        self.samples.inc(samples)
        self.late.inc(late)

    def dead_letter(self, letter: DeadLetter):
        self.dead.inc()
        return DEAD_LETTERS, dead_letter_record(self.dead_letters_topic, letter)

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()


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

    def keep(self, name: str, accepted: ModelSnapshot | None, shadow: ModelSnapshot | None,
             shadow_changed: bool) -> None:
        """Under the current key: the snapshot now served (None: unchanged) and the shadow (if it changed)."""
        if accepted is not None:
            self.accepted[name].update(accepted)
        if shadow_changed:
            if shadow is None:
                self.shadowed[name].clear()
            else:
                self.shadowed[name].update(shadow)


class Outputs:
    """A call's outputs as one packed routed record (``kafka_io.packed``); about once a second the shards append
    their model's numbers to the stats file (benchmarks)."""

    def __init__(self, shards: dict[str, InferenceShard]) -> None:
        self.shards = shards
        self.next_report = time.monotonic() + STATS_EVERY_S

    def packed(self, outgoing) -> list[str]:
        if time.monotonic() >= self.next_report:
            self.next_report = time.monotonic() + STATS_EVERY_S
            for shard in self.shards.values():
                shard.report()
        return packed(outgoing)


def _shard_gauges(group, shards: list[InferenceShard]) -> None:
    """The shards' tallies as gauges on ``group``: counts summed, the latest batch's figures of the first."""
    for name in ("predictions", "review_requests", "batches", "model_swaps", "model_refused",
                 "confidence_drifts", "inference_us_total", "unscored_windows", "anomalies", "forecasts", "unlabeled_windows"):
        group.gauge(name, lambda name=name: int(sum(getattr(s.tally, name) for s in shards)))
    group.gauge("batch_size", lambda: max(s.tally.last_batch_size for s in shards))
    group.gauge("inference_ms", lambda: int(round(max(s.tally.last_inference_ms for s in shards))))
    group.gauge("model_version", lambda: int(shards[0].model.version))
    group.gauge("reviews_over_share", lambda: sum(s.scorer.router.over_share for s in shards))
