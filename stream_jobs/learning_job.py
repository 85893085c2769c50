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

from model.registry import ArtifactError, ModelRegistry
from operators.label_join import JoinTarget, LabelJoiner
from operators.learning import LearningLoop, VersionPublisher, loop_from_registry
from operators.learning_state import AcceptedVersion, LoopJournal, RolledBack, ShadowEnded, Shadowing
from operators.parse import raw_text
from operators.serving_model import serving_spec
from model.spec import ModelSpec
from schemas import DeadLetter, Label, ReviewRequest, SchemaError, WindowSample
from settings import Config
from stream_jobs.flink_env import JobRun, make_env, parse_job_args, quiet_embedded_logging
from stream_jobs.kafka_io import (
    DEAD_LETTERS,
    dead_letter_record,
    keyed_source,
    now_ms,
    routed,
    sink_routed,
    split_envelope,
)


class JoinAnswers(KeyedProcessFunction):
    """Per review id: waits for the request and its answers (either order), with a TTL."""

    def __init__(self, cfg: Config, targets: dict[str, JoinTarget]) -> None:
        self.topics, self.targets, self.labeling = cfg.topics, targets, cfg.labeling
        self.ttl_ms, self.answers_needed = cfg.learning.label_ttl_ms, cfg.labeling.answers_needed

    def open(self, runtime_context: RuntimeContext) -> None:
        quiet_embedded_logging()
        (first, default), *others = self.targets.items()
        self.joiner = LabelJoiner(list(default.classes), self.ttl_ms, self.answers_needed, default.shape,
                                  dict(others) if others else None, first, self.labeling.creators,
                                  self.labeling.max_classes)
        self.state = runtime_context.get_state(ValueStateDescriptor("join", Types.PICKLED_BYTE_ARRAY()))
        self.joined = runtime_context.get_metrics_group().counter("labeled_windows")

    def _letter(self, topic: str, partition: int, offset: int, reason: str, raw: bytes | str, field=None,
                model_name: str | None = None):
        text = raw if isinstance(raw, str) else raw_text(raw)
        letter = DeadLetter(topic, partition, offset, reason, text, field, "label-join", now_ms(), model_name)
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
            yield self._letter(self.topics.labels, partition, offset, r.reason, r.label.encode(), "label",
                               r.label.model_name)

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


class DecodeWindows(KeyedProcessFunction):
    """Unlabeled windows from serving (keyed by model name), checked against their model's window shape and
    forecast horizon; a bad one is a dead letter with the reason."""

    def __init__(self, cfg: Config, targets: dict[str, JoinTarget], horizons: dict[str, int]) -> None:
        self.topics, self.targets, self.horizons = cfg.topics, targets, horizons

    def open(self, runtime_context: RuntimeContext) -> None:
        self.received = runtime_context.get_metrics_group().counter("unlabeled_windows_in")

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        topic, partition, offset, _, payload = split_envelope(value)
        name = ctx.get_current_key()
        target = self.targets.get(name)
        try:
            sample = WindowSample.decode(payload, shape=target.shape if target is not None else None,
                                         horizon=self.horizons.get(name) or None)
            if target is None:
                raise SchemaError("model_name", f"{name!r} is not a model this job learns ({', '.join(self.targets)})")
        except SchemaError as exc:
            letter = DeadLetter(topic, partition, offset, str(exc), raw_text(payload), exc.field, "unlabeled-windows",
                                now_ms(), name if target is not None else None)
            yield DEAD_LETTERS, dead_letter_record(self.topics.dead_letters, letter)
            return
        self.received.inc()
        yield sample


class LearnAndPublish(KeyedProcessFunction):
    """Online learning per model (keyed by model name, so parallelism 1 per model; each model learns,
    gates and versions on its own); an ``operators.learning.VersionPublisher`` does the work.

    The learning loop (weights, optimizer, replay reservoir, holdout, drift detector) lives in memory
    and in keyed state as a snapshot plus a journal of the steps since (``operators.learning_state``),
    so a restored job resumes it exactly while a label costs a small journal append, not a rewrite of
    the whole loop.
    """

    def __init__(self, cfg: Config, snapshot_every: int = 64) -> None:
        self.cfg, self.snapshot_every = cfg, snapshot_every

    def open(self, runtime_context: RuntimeContext) -> None:
        quiet_embedded_logging()
        torch.set_num_threads(1)
        cfg = self.cfg
        self.registry = ModelRegistry(cfg.registry.path)
        self.publishers = {name: VersionPublisher(self.registry, name, cfg.topics, cfg.serving,
                                                  cfg.registry.signing_key, cfg.int8_check(name),
                                                  cfg.registry.keep_withdrawn)
                           for name in cfg.served_models}
        self.snapshot = runtime_context.get_state(ValueStateDescriptor("loop", Types.PICKLED_BYTE_ARRAY()))
        self.journal_state = runtime_context.get_list_state(
            ListStateDescriptor("journal", Types.PICKLED_BYTE_ARRAY()))
        self.journal = LoopJournal(self.snapshot_every)
        self.loops: dict[str, LearningLoop] = {}  # by key (the model name): restored once, then kept in memory
        self.learned = 0
        self.progress = (0.0, 0)  # (prequential accuracy, model version) after the latest labeled window
        self.label_lag_ms = 0  # from a label's answer to its learning step, latest
        group = runtime_context.get_metrics_group()
        publishers = list(self.publishers.values())
        group.gauge("versions_published", lambda: sum(p.published for p in publishers))
        group.gauge("drift_events", lambda: sum(p.drift_events for p in publishers))
        group.gauge("rollbacks", lambda: sum(p.rollbacks for p in publishers))
        group.gauge("shadow_promoted", lambda: sum(p.promoted for p in publishers))
        group.gauge("shadow_withdrawn", lambda: sum(p.withdrawn for p in publishers))
        group.gauge("candidates_deferred", lambda: sum(loop.deferred for loop in self.loops.values()))
        group.gauge("candidates_refused", lambda: sum(loop.refused for loop in self.loops.values()))
        group.gauge("labeled_windows_learned", lambda: self.learned)
        self.unlabeled_learned = 0
        group.gauge("unlabeled_windows_learned", lambda: self.unlabeled_learned)
        self.unlabeled_set_aside = 0
        group.gauge("unlabeled_windows_set_aside", lambda: self.unlabeled_set_aside)
        group.gauge("label_lag_ms", lambda: int(self.label_lag_ms))
        group.gauge("prequential_accuracy_pct", lambda: int(round(self.progress[0] * 100)))
        group.gauge("model_version", lambda: int(self.progress[1]))
        self.by_model: dict[str, tuple[float, int]] = {}  # per model: (prequential accuracy, version)
        if len(self.publishers) > 1:  # per model: flink_..._operator_model_<metric>{model="<name>"}
            for name, publisher in self.publishers.items():
                sub = group.add_group("model", name)
                sub.gauge("versions_published", lambda p=publisher: p.published)
                sub.gauge("prequential_accuracy_pct",
                          lambda name=name: int(round(self.by_model.get(name, (0.0, 0))[0] * 100)))
                sub.gauge("model_version", lambda name=name: int(self.by_model.get(name, (0.0, 0))[1]))

    def _loop(self, key: str) -> LearningLoop:
        loop = self.loops.get(key)
        if loop is None:
            loop = self.journal.restore(
                self.snapshot.value(), list(self.journal_state.get() or []),
                lambda: loop_from_registry(self.registry, key, self.cfg.learning, self.cfg.declared_spec(key)))
            self.loops[key] = loop
        return loop

    def _journal(self, entry, loop: LearningLoop) -> None:
        self.journal_state.add(entry)
        if self.journal.record():
            self.snapshot.update(loop)
            self.journal_state.clear()

    def process_element(self, item, ctx: KeyedProcessFunction.Context):
        key = ctx.get_current_key()
        loop = self._loop(key)
        now = now_ms()
        if getattr(item, "answered_at", 0):  # (an unlabeled window has no answer)
            self.label_lag_ms = max(0, now - item.answered_at)
        set_aside = loop.unlabeled_set_aside
        learned = self.publishers[key].learn(loop, item, now)
        self._journal(item, loop)
        if learned.accepted is not None:
            self._journal(AcceptedVersion(*learned.accepted), loop)
        if learned.rolled_back is not None:
            self._journal(RolledBack(*learned.rolled_back), loop)
        if learned.shadowing is not None:
            self._journal(Shadowing(*learned.shadowing), loop)
        if learned.shadow_ended is not None:
            self._journal(ShadowEnded(learned.shadow_ended), loop)
        yield from map(routed, learned.outgoing)
        if isinstance(item, WindowSample):
            if loop.unlabeled_set_aside == set_aside:
                self.unlabeled_learned += 1
            else:
                self.unlabeled_set_aside += 1  # the version in service found it abnormal
        else:
            self.learned += 1
        self.progress = self.by_model[key] = (loop.prequential_accuracy, loop.version)


def served_specs(cfg: Config) -> dict[str, ModelSpec]:
    """Each served model's spec (its newest version's, or its declaration's on a cold start)."""
    return {name: serving_spec(cfg.registry.path, name, None, cfg.declared_spec(name)) for name in cfg.served_models}


def join_targets(cfg: Config, specs: dict[str, ModelSpec] | None = None) -> dict[str, JoinTarget]:
    """Each served model's classes and window shape; the first is the model of requests that name none."""
    specs = specs or served_specs(cfg)
    return {name: JoinTarget(tuple(spec.classes), (spec.window, spec.n_channels)) for name, spec in specs.items()}


def build_learning_job(env, cfg: Config, run: JobRun = JobRun()) -> None:
    topics, group_id = cfg.topics, run.group_id or "sensorloop-learning"
    try:
        specs = served_specs(cfg)
    except ArtifactError as exc:
        raise SystemExit(f"sensorloop learning job: {exc}") from None
    targets = join_targets(cfg, specs)
    default = next(iter(targets))
    records = keyed_source(env, cfg.broker.bootstrap, [topics.review_requests, topics.labels], group_id,
                           "reviews-and-labels", "review_id", fetch_wait_ms=cfg.broker.rare_fetch_wait_ms)
    labeled = (records.process(JoinAnswers(cfg, targets), output_type=Types.PICKLED_BYTE_ARRAY())
               .name("join-answers").uid("join-answers"))
    items, dead = labeled, [labeled.get_side_output(DEAD_LETTERS)]
    if any(spec.has("anomaly") or spec.has("forecast") for spec in specs.values()):
        horizons = {name: spec.horizon if spec.has("forecast") else 0 for name, spec in specs.items()}
        raw = keyed_source(env, cfg.broker.bootstrap, [topics.windows], f"{group_id}-windows", "unlabeled-windows",
                           "model_name", fetch_wait_ms=cfg.broker.rare_fetch_wait_ms)
        windows = (raw.process(DecodeWindows(cfg, targets, horizons), output_type=Types.PICKLED_BYTE_ARRAY())
                   .name("unlabeled-windows").uid("decode-unlabeled-windows"))
        items, dead = labeled.union(windows), dead + [windows.get_side_output(DEAD_LETTERS)]
    published = (items.key_by(lambda item: item.model_name or default, key_type=Types.STRING())
                 .process(LearnAndPublish(cfg), output_type=Types.STRING())
                 .name("learn-and-publish").uid("learn-and-publish"))
    out = published.union(*dead)
    sink_routed(out, cfg.broker.bootstrap, cfg.flink.exactly_once, f"{group_id}-tx")


def main(argv: list[str] | None = None) -> None:
    cfg, run = parse_job_args("learning", argv)
    env = make_env(cfg, "learning", run)
    build_learning_job(env, cfg, run)
    env.execute("sensorloop-learning")


if __name__ == "__main__":
    main()
