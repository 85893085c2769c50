"""The learning job: review-requests + labels → join by review id → online learning →
validation gate → registry version → announcement on model-snapshots (serving swaps to it).

Run: ``python -m stream_jobs.learning_job [--config FILE] [--set section.key=value ...]`` (or
``sensorloop learn``, ``job submit learning``, a FlinkDeployment).
"""

from __future__ import annotations

import torch
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from model.registry import ModelRegistry
from operators.label_join import LabelJoiner
from operators.learning import LearningLoop, VersionPublisher, loop_from_registry
from operators.learning_state import AcceptedVersion, LoopJournal
from operators.parse import raw_text
from operators.serving_model import serving_spec
from schemas import DeadLetter, Label, ReviewRequest, SchemaError
from settings import Config
from stream_jobs.flink_env import JobRun, make_env, parse_job_args
from stream_jobs.kafka_io import (
    DEAD_LETTERS,
    dead_letter_record,
    keyed_source,
    now_ms,
    routed,
    routed_sink,
    split_envelope,
)


class JoinAnswers(KeyedProcessFunction):
    """Per review id: waits for the request and its answers (either order), with a TTL."""

    def __init__(self, cfg: Config, classes: list[str], shape: tuple[int, int]) -> None:
        self.topics, self.classes, self.shape = cfg.topics, classes, shape
        self.ttl_ms, self.answers_needed = cfg.learning.label_ttl_ms, cfg.labeling.answers_needed

    def open(self, runtime_context: RuntimeContext) -> None:
        self.joiner = LabelJoiner(self.classes, self.ttl_ms, self.answers_needed, self.shape)
        self.state = runtime_context.get_state(ValueStateDescriptor("join", Types.PICKLED_BYTE_ARRAY()))
        self.joined = runtime_context.get_metrics_group().counter("labeled_windows")

    def _letter(self, topic: str, partition: int, offset: int, reason: str, raw: bytes | str, field=None):
        text = raw if isinstance(raw, str) else raw_text(raw)
        letter = DeadLetter(topic, partition, offset, reason, text, field, "label-join", now_ms())
        return DEAD_LETTERS, dead_letter_record(self.topics.dead_letters, letter)

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
    """Online learning for one model (keyed by model name, so parallelism 1 per model); an
    ``operators.learning.VersionPublisher`` does the work.

    The learning loop (weights, optimizer, replay reservoir, holdout, drift detector) lives in memory
    and in keyed state as a snapshot plus a journal of the steps since (``operators.learning_state``),
    so a restored job resumes it exactly while a label costs a small journal append, not a rewrite of
    the whole loop.
    """

    def __init__(self, cfg: Config, snapshot_every: int = 64) -> None:
        self.cfg, self.snapshot_every = cfg, snapshot_every

    def open(self, runtime_context: RuntimeContext) -> None:
        torch.set_num_threads(1)
        cfg = self.cfg
        self.registry = ModelRegistry(cfg.registry.path)
        self.publisher = VersionPublisher(self.registry, cfg.registry.model_name, cfg.topics, cfg.serving,
                                          cfg.registry.signing_key)
        self.snapshot = runtime_context.get_state(ValueStateDescriptor("loop", Types.PICKLED_BYTE_ARRAY()))
        self.journal_state = runtime_context.get_list_state(
            ListStateDescriptor("journal", Types.PICKLED_BYTE_ARRAY()))
        self.journal = LoopJournal(self.snapshot_every)
        self.loops: dict[str, LearningLoop] = {}  # by key (the model name): restored once, then kept in memory
        self.learned = 0
        self.progress = (0.0, 0)  # (prequential accuracy, model version) after the latest labeled window
        self.label_lag_ms = 0  # from a label's answer to its learning step, latest
        group = runtime_context.get_metrics_group()
        group.gauge("versions_published", lambda: self.publisher.published)
        group.gauge("drift_events", lambda: self.publisher.drift_events)
        group.gauge("labeled_windows_learned", lambda: self.learned)
        group.gauge("label_lag_ms", lambda: int(self.label_lag_ms))
        group.gauge("prequential_accuracy_pct", lambda: int(round(self.progress[0] * 100)))
        group.gauge("model_version", lambda: int(self.progress[1]))

    def _loop(self, key: str) -> LearningLoop:
        loop = self.loops.get(key)
        if loop is None:
            loop = self.journal.restore(
                self.snapshot.value(), list(self.journal_state.get() or []),
                lambda: loop_from_registry(self.registry, self.cfg.registry.model_name, self.cfg.learning,
                                           self.cfg.served_spec))
            self.loops[key] = loop
        return loop

    def _journal(self, entry, loop: LearningLoop) -> None:
        self.journal_state.add(entry)
        if self.journal.record():
            self.snapshot.update(loop)
            self.journal_state.clear()

    def process_element(self, item, ctx: KeyedProcessFunction.Context):
        loop = self._loop(ctx.get_current_key())
        now = now_ms()
        if item.answered_at:
            self.label_lag_ms = max(0, now - item.answered_at)
        learned = self.publisher.learn(loop, item, now)
        self._journal(item, loop)
        if learned.accepted is not None:
            self._journal(AcceptedVersion(*learned.accepted), loop)
        yield from map(routed, learned.outgoing)
        self.learned += 1
        self.progress = (loop.prequential_accuracy, loop.version)


def build_learning_job(env, cfg: Config, run: JobRun = JobRun()) -> None:
    topics, group_id = cfg.topics, run.group_id or "sensorloop-learning"
    model_name = cfg.registry.model_name
    spec = serving_spec(cfg.registry.path, model_name, None, cfg.served_spec)  # the declared one on a cold start
    classes, shape = list(spec.classes), (spec.window, spec.n_channels)
    records = keyed_source(env, cfg.broker.bootstrap, [topics.review_requests, topics.labels], group_id,
                           "reviews-and-labels", "review_id")
    labeled = (records.process(JoinAnswers(cfg, classes, shape), output_type=Types.PICKLED_BYTE_ARRAY())
               .name("join-answers").uid("join-answers"))
    published = (labeled.key_by(lambda item: model_name, key_type=Types.STRING())
                 .process(LearnAndPublish(cfg), output_type=Types.STRING())
                 .name("learn-and-publish").uid("learn-and-publish"))
    out = published.union(labeled.get_side_output(DEAD_LETTERS))
    out.sink_to(routed_sink(cfg.broker.bootstrap, cfg.flink.exactly_once, f"{group_id}-tx")).name(
        "kafka-out").uid("kafka-out")


def main(argv: list[str] | None = None) -> None:
    cfg, run = parse_job_args("learning", argv)
    env = make_env(cfg, "learning", run)
    build_learning_job(env, cfg, run)
    env.execute("sensorloop-learning")


if __name__ == "__main__":
    main()
