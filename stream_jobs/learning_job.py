"""The learning job: review-requests + labels → join by review id → online learning →
validation gate → registry version → announcement on model-snapshots (serving swaps to it).

Run: ``python -m stream_jobs.learning_job --bootstrap HOST:PORT`` (or ``sensorloop learn``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import torch
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from model.registry import ModelRegistry
from model.spec import ModelSpec
from model.train import load_network, publish_version, weights_bytes
from operators.label_join import LabelJoiner
from operators.learning import LearningConfig, LearningLoop
from operators.learning_state import AcceptedVersion, LoopJournal
from operators.parse import raw_text
from schemas import DeadLetter, DriftEvent, Label, ModelSnapshot, ReviewRequest, SchemaError, Topics
from stream_jobs.flink_env import FlinkSettings, make_env
from stream_jobs.kafka_io import keyed_source, now_ms, route, route_dead_letter, routed_sink, split_envelope
from stream_jobs.serving_job import add_config_arguments, config_from_args

log = logging.getLogger(__name__)
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())


class JoinAnswers(KeyedProcessFunction):
    """Per review id: waits for the request and its answers (either order), with a TTL."""

    def __init__(self, topics: Topics, classes: list[str], ttl_ms: int, answers_needed: int) -> None:
        self.topics, self.classes, self.ttl_ms, self.answers_needed = topics, classes, ttl_ms, answers_needed

    def open(self, runtime_context: RuntimeContext) -> None:
        self.joiner = LabelJoiner(self.classes, self.ttl_ms, self.answers_needed)
        self.state = runtime_context.get_state(ValueStateDescriptor("join", Types.PICKLED_BYTE_ARRAY()))
        self.joined = runtime_context.get_metrics_group().counter("labeled_windows")

    def _letter(self, topic: str, partition: int, offset: int, reason: str, raw: bytes | str, field=None):
        text = raw if isinstance(raw, str) else raw_text(raw)
        letter = DeadLetter(topic, partition, offset, reason, text, field, "label-join", now_ms())
        return DEAD_LETTERS, route_dead_letter(self.topics.dead_letters, letter)

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        topic, partition, offset, _, payload = split_envelope(value)
        now = now_ms()
        state = self.state.value() or self.joiner.new_state()
        try:
            if topic == self.topics.review_requests:
                done, rejected = self.joiner.on_request(state, ReviewRequest.decode(payload), now)
            else:
                done, rejected = self.joiner.on_label(state, Label.decode(payload), now)
        except SchemaError as exc:
            yield self._letter(topic, partition, offset, str(exc), payload, exc.field)
            return
        self.state.update(state)
        if state.first_seen_ms == now:
            ctx.timer_service().register_processing_time_timer(now + self.ttl_ms)
        for item in done:
            self.joined.inc()
            yield item
        for r in rejected:
            yield self._letter(self.topics.labels, partition, offset, r.reason, r.label.encode(), "label")

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        state = self.state.value()
        if state is None:
            return
        if not self.joiner.expired(state, timestamp):
            ctx.timer_service().register_processing_time_timer(state.first_seen_ms + self.ttl_ms)
            return
        for r in self.joiner.expire(state, ctx.get_current_key()):
            yield self._letter(self.topics.labels, -1, -1, r.reason, r.label.encode(), "review_id")
        self.state.clear()


class LearnAndPublish(KeyedProcessFunction):
    """Online learning for one model (keyed by model name, so parallelism 1 per model).

    The learning loop (weights, optimizer, replay reservoir, holdout, drift detector) lives in memory
    and in keyed state as a snapshot plus a journal of the steps since (``operators.learning_state``),
    so a restored job resumes it exactly while a label costs a small journal append, not a rewrite of
    the whole loop. Version numbers come from the registry.
    """

    def __init__(self, topics: Topics, registry: str, model_name: str, config: LearningConfig,
                 snapshot_every: int = 64) -> None:
        self.topics, self.registry_root, self.model_name, self.config = topics, registry, model_name, config
        self.snapshot_every = snapshot_every

    def open(self, runtime_context: RuntimeContext) -> None:
        torch.set_num_threads(1)
        self.registry = ModelRegistry(self.registry_root)
        self.snapshot = runtime_context.get_state(ValueStateDescriptor("loop", Types.PICKLED_BYTE_ARRAY()))
        self.journal_state = runtime_context.get_list_state(
            ListStateDescriptor("journal", Types.PICKLED_BYTE_ARRAY()))
        self.journal = LoopJournal(self.snapshot_every)
        self.loops: dict[str, LearningLoop] = {}  # by key (the model name): restored once, then kept in memory
        group = runtime_context.get_metrics_group()
        self.published = group.counter("versions_published")
        self.refused = group.counter("candidates_refused")
        self.drifts = group.counter("drift_events")
        self.trained = group.counter("labeled_windows_learned")
        self.progress = (0.0, 0)  # (prequential accuracy, model version) after the latest labeled window
        self.label_lag_ms = 0  # from a label's answer to its learning step, latest
        group.gauge("label_lag_ms", lambda: int(self.label_lag_ms))
        group.gauge("prequential_accuracy_pct", lambda: int(round(self.progress[0] * 100)))
        group.gauge("model_version", lambda: int(self.progress[1]))

    def _new_loop(self) -> LearningLoop:
        loaded = self.registry.load(self.model_name)
        spec = ModelSpec.from_dict(loaded.metadata.spec)
        return LearningLoop(load_network(spec, loaded.weights_bytes), spec, loaded.metadata.version, self.config)

    def _loop(self, key: str) -> LearningLoop:
        loop = self.loops.get(key)
        if loop is None:
            loop = self.journal.restore(self.snapshot.value(), list(self.journal_state.get() or []), self._new_loop)
            self.loops[key] = loop
        return loop

    def _journal(self, entry, loop: LearningLoop) -> None:
        self.journal_state.add(entry)
        if self.journal.record():
            self.snapshot.update(loop)
            self.journal_state.clear()

    def process_element(self, item, ctx: KeyedProcessFunction.Context):
        loop = self._loop(ctx.get_current_key())
        if item.answered_at:
            self.label_lag_ms = max(0, now_ms() - item.answered_at)
        candidate = loop.learn(item)
        self._journal(item, loop)
        for signal in loop.take_drifts():
            event = DriftEvent(self.model_name, signal, now_ms(), loop.version, self.config.drift_budget_per_minute,
                               self.config.drift_boost_seconds, loop.drift.error_rate)
            log.info("drift (%s) detected after %d labeled windows", signal, loop.labeled)
            self.drifts.inc()
            yield route(self.topics.drift_events, self.model_name, event.encode())
        if candidate is not None:
            d = candidate.decision
            metrics = {"holdout_accuracy": d.candidate_accuracy, "serving_holdout_accuracy": d.serving_accuracy,
                       "holdout_windows": float(d.samples), "prequential_accuracy": loop.prequential_accuracy,
                       "labeled_windows": float(loop.labeled), "drift_events": float(loop.drift_events),
                       "trigger_label_at_ms": float(candidate.trigger_answered_at)}
            meta = publish_version(self.registry, self.model_name, candidate.net, loop.spec, metrics,
                                   parent_version=loop.version, data_seen=loop.labeled,
                                   note=f"online: {d.reason}")
            loop.accepted(candidate, meta.version)
            self._journal(AcceptedVersion(meta.version, weights_bytes(candidate.net)), loop)
            self.published.inc()
            snapshot = ModelSnapshot.from_dict(self.registry.announcement(self.model_name, meta.version))
            log.info("published %s v%d %d ms after the answer that completed it: %s", self.model_name,
                     meta.version, now_ms() - candidate.trigger_answered_at, d.reason)
            yield route(self.topics.model_snapshots, self.model_name, snapshot.encode())
        self.trained.inc()
        self.progress = (loop.prequential_accuracy, loop.version)


def build_learning_job(env, bootstrap: str, registry: str, model_name: str, config: LearningConfig,
                       topics: Topics, settings: FlinkSettings, group_id: str = "sensorloop-learning",
                       ttl_ms: int = 3_600_000, answers_needed: int = 1) -> None:
    classes = list(ModelRegistry(registry).latest_metadata(model_name).spec["classes"])
    records = keyed_source(env, bootstrap, [topics.review_requests, topics.labels], group_id,
                           "reviews-and-labels", "review_id")
    labeled = (records.process(JoinAnswers(topics, classes, ttl_ms, answers_needed),
                               output_type=Types.PICKLED_BYTE_ARRAY()).name("join-answers").uid("join-answers"))
    published = (labeled.key_by(lambda item: model_name, key_type=Types.STRING())
                 .process(LearnAndPublish(topics, registry, model_name, config), output_type=Types.STRING())
                 .name("learn-and-publish").uid("learn-and-publish"))
    out = published.union(labeled.get_side_output(DEAD_LETTERS))
    out.sink_to(routed_sink(bootstrap, settings.exactly_once, f"{group_id}-tx")).name("kafka-out").uid("kafka-out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run the sensorloop learning job on Flink")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", default="var/registry")
    parser.add_argument("--model-name", default="basic-motions")
    parser.add_argument("--group-id", default="sensorloop-learning")
    parser.add_argument("--label-ttl-ms", type=int, default=3_600_000)
    parser.add_argument("--answers-needed", type=int, default=1)
    parser.add_argument("--execution-mode", default="thread", choices=["process", "thread"],
                        help="thread (default) or process (torch in a separate Python worker; label -> serving "
                             "0.7 s instead of 0.4 s at the median in bench/label_latency_bench.py)")
    add_config_arguments(parser, LearningConfig)
    add_config_arguments(parser, FlinkSettings, skip=("execution_mode",))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args, LearningConfig)
    settings = dataclasses.replace(config_from_args(args, FlinkSettings, skip=("execution_mode",)),
                                   execution_mode=args.execution_mode)
    env = make_env(settings)
    build_learning_job(env, args.bootstrap, args.registry, args.model_name, config, Topics.from_env(), settings,
                       args.group_id, args.label_ttl_ms, args.answers_needed)
    env.execute("sensorloop-learning")


if __name__ == "__main__":
    main()
