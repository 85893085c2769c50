"""One inference shard of the serving path: micro-batches windows across devices, scores each
batch, routes reviews, watches confidence, and swaps model versions; the Flink job's
``InferBatches`` keeps the pending windows and the accepted announcement in keyed state and calls
this class for everything else.

>>> from operators.batching import ListStore
>>> shard = InferenceShard.for_tests(max_batch=2)
>>> store = ListStore()
>>> shard.on_window(store, shard.example_window("d1", 1), now_ms=0)
[]
>>> sorted({o.topic for o in shard.on_window(store, shard.example_window("d2", 1), now_ms=1)})
['predictions']
>>> shard.tally.predictions, shard.tally.batches
(2, 1)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import orjson

from model.registry import ArtifactError
from operators.batching import BatchPolicy, MicroBatcher, PendingStore
from operators.confidence_watch import ConfidenceWatch
from operators.device_baseline import DeviceScoreBaseline
from operators.inference import ScoringBatch, WindowScorer
from operators.outgoing import Outgoing, dead_letter_out
from operators.parse import raw_text
from operators.routing import ReviewRouter, boosted_budget
from operators.serving_model import ControlMessage, ServingModel, input_mismatch
from operators.window_sampling import WindowSampler
from operators.windowing import Window
from schemas import DeadLetter, DriftEvent, ModelSnapshot, Topics
from settings import ServingSettings

log = logging.getLogger(__name__)
SnapshotLoader = Callable[[ModelSnapshot], ServingModel]


def _now(run: Callable[[], ScoringBatch], finish: Callable[[ScoringBatch], list[Outgoing]]) -> list[Outgoing]:
    return finish(run())


@dataclass
class ShardTally:
    """What one shard did since it started (the job's metrics read these)."""

    predictions: int = 0
    review_requests: int = 0
    anomalies: int = 0  # review requests for an anomaly score at or above the threshold
    forecasts: int = 0
    unlabeled_windows: int = 0  # windows passed to the learning side for the self-supervised heads
    batches: int = 0
    model_swaps: int = 0
    model_refused: int = 0
    confidence_drifts: int = 0
    unscored_windows: int = 0
    inference_us_total: int = 0
    last_batch_size: int = 0
    last_inference_ms: float = 0.0


class InferenceShard:
    """Scores windows in micro-batches with the model in service and swaps in announced versions.

    On an announcement, pending windows are scored with the old model first; the new version is
    loaded through ``load`` (sha256, metadata, smoke inference) and swapped in, or refused with a
    dead letter (once per announcement, from shard 0) while the old model keeps serving.

    An announcement with ``stage = "shadow"`` is loaded the same way but only scored beside the version
    in service (``WindowScorer.shadow``) until it is announced to serve (promoted), withdrawn
    (``stage = "withdrawn"``) or passed by a newer version in service; ``shadow_snapshot`` says which.
    """

    def __init__(self, settings: ServingSettings, model_name: str, topics: Topics, model: ServingModel,
                 load: SnapshotLoader, stats_file: str = "") -> None:
        self.settings, self.model_name, self.topics, self.load = settings, model_name, topics, load
        self.unadapted_warned: int | None = None  # the version last reported unable to normalise per device
        self.scorer = WindowScorer(model, ReviewRouter(settings.query_threshold_or_default, settings.audit_rate,
                                                       settings.review_budget_per_minute, settings.query_strategy,
                                                       settings.review_device_share, settings.review_class_share),
                                   settings.canary_share, settings.anomaly_threshold,
                                   DeviceScoreBaseline(settings.anomaly_device_windows)
                                   if settings.anomaly_device_windows else None)
        self.batcher = MicroBatcher(BatchPolicy(settings.max_batch, settings.max_wait_ms))
        self.watch = (ConfidenceWatch(model_name, settings.confidence_drift_delta,
                                      boost_budget_per_minute=settings.drift_budget_per_minute,
                                      boost_seconds=settings.drift_boost_seconds)
                      if settings.confidence_drift_delta else None)
        self.boost_until: int | None = None
        self.stats_file = stats_file
        self.tally = ShardTally()
        self.shadow_snapshot: ModelSnapshot | None = None
        self.sampler = WindowSampler(settings.unlabeled_share)  # unlabeled windows for the self-supervised heads
        # how a due batch is scored: at once (the default), or handed to a ScoringPipeline, which runs the model
        # over it on a thread of its own and makes its outputs later, on this thread (then they are not in the
        # returned list)
        self.submit: Callable[[Callable[[], ScoringBatch], Callable[[ScoringBatch], list[Outgoing]]],
                              list[Outgoing]] = _now

    @property
    def model(self) -> ServingModel:
        return self.scorer.model

    def on_window(self, store: PendingStore, window: Window, now_ms: int) -> list[Outgoing]:
        return self._hand_over(self.batcher.add(store, window, now_ms), now_ms)

    def on_windows(self, store: PendingStore, windows: list[Window], now_ms: int) -> list[Outgoing]:
        """The windows one sample block completed (one store write for all of them)."""
        return self._hand_over(self.batcher.add_many(store, windows, now_ms), now_ms)

    def _hand_over(self, windows: list[Window] | None, now_ms: int) -> list[Outgoing]:
        """Score ``windows`` in batches of at most ``max_batch`` (a group of messages or a block may complete
        many more at once; larger batches ran slower per window on the CPU)."""
        out: list[Outgoing] = []
        step = self.settings.max_batch
        for at in range(0, len(windows or ()), step):
            out += self.submit(partial(self.scorer.run, self._prepare(windows[at:at + step])),
                               partial(self._publish, now_ms=now_ms))
        return out

    def due_at(self, store: PendingStore) -> int | None:
        """When the pending batch must be flushed (for the job's timer)."""
        return self.batcher.deadline(store)

    def on_timer(self, store: PendingStore, now_ms: int) -> list[Outgoing]:
        return self._hand_over(self.batcher.poll(store, now_ms), now_ms)

    def flush(self, store: PendingStore, now_ms: int) -> list[Outgoing]:
        """Score every pending window now, due or not (the sharded layout does so before each checkpoint)."""
        return self._hand_over(store.take_all(), now_ms) if store.count() else []

    def on_control(self, store: PendingStore, control: ControlMessage, now_ms: int
                   ) -> tuple[list[Outgoing], ModelSnapshot | None]:
        """A drift event or a model announcement; returns the outputs and the snapshot now served (if swapped)."""
        message = control.message
        if isinstance(message, DriftEvent):
            self.boost(message, now_ms)
            return [], None
        if message.stage is not None:
            refused = self.shadow_stage(message)
            return ([self._refusal(control, message, refused, now_ms)] if refused and control.shard == 0 else []), None
        out = self.flush(store, now_ms)  # windows that came first: the old model
        refused = self.swap(message)
        if refused is None:
            return out, message if message.model_name == self.model_name else None
        if control.shard == 0:  # one report per announcement
            out.append(self._refusal(control, message, refused, now_ms))
        return out, None

    def _refusal(self, control: ControlMessage, message: ModelSnapshot, refused: str, now_ms: int) -> Outgoing:
        what = f"as its shadow v{message.version}" if message.stage == "shadow" else f"v{message.version}"
        letter = DeadLetter(self.topics.model_snapshots, control.partition, control.offset,
                            f"refused {message.model_name} {what}, still serving v{self.model.version}: {refused}",
                            raw_text(message.encode()), "artifact_uri", "snapshot", now_ms, message.model_name)
        return dead_letter_out(self.topics.dead_letters, letter)

    def _try_load(self, snapshot: ModelSnapshot, role: str = "") -> tuple[ServingModel | None, str | None]:
        """The announced version, verified, smoke-tested and of this shard's input shape; or why not."""
        try:
            model = self.load(snapshot)
            mismatch = input_mismatch(model.spec, self.settings.window, self.model.spec.channels)
            if mismatch:
                raise ArtifactError(f"{snapshot.model_name} v{snapshot.version} cannot serve here: {mismatch}")
        except ArtifactError as exc:
            self.tally.model_refused += 1
            log.warning("refused %s v%d%s: %s", snapshot.model_name, snapshot.version, role, exc)
            return None, str(exc)
        return model, None

    def shadow_stage(self, snapshot: ModelSnapshot) -> str | None:
        """Start or end the shadow phase of ``snapshot``'s version; returns why it was refused (None when
        done or not ours). A shadow older than the version in service is refused: it could never serve."""
        if snapshot.model_name != self.model_name:
            return None
        if snapshot.stage == "withdrawn":
            if self.shadow_snapshot is not None and self.shadow_snapshot.version == snapshot.version:
                self.scorer.shadow, self.shadow_snapshot = None, None
                log.info("shadow %s v%d withdrawn", snapshot.model_name, snapshot.version)
            return None
        if snapshot.version <= self.model.version:
            return f"v{snapshot.version} is not newer than the version in service"
        model, refused = self._try_load(snapshot, " as a shadow")
        if model is None:
            return refused
        self.scorer.shadow, self.shadow_snapshot = model, snapshot
        log.info("shadowing %s v%d beside v%d", model.name, model.version, self.model.version)
        return None

    def swap(self, snapshot: ModelSnapshot) -> str | None:
        """Serve ``snapshot``'s version; returns why it was refused (None when swapped or not ours).
        An announcement of the version already served is verified like any other: a forged one must not
        be kept as the version to restore."""
        if snapshot.model_name != self.model_name:
            return None
        model, refused = self._try_load(snapshot)
        if model is None:
            return refused
        self.scorer.swap(model)
        if self.shadow_snapshot is not None and self.shadow_snapshot.version <= model.version:
            self.scorer.shadow, self.shadow_snapshot = None, None  # promoted, or passed by a newer version
        if self.watch is not None:
            self.watch.reset()  # the new model has its own confidence level
        self.tally.model_swaps += 1
        log.info("now serving %s v%d", model.name, model.version)
        return None

    def boost(self, event: DriftEvent, now_ms: int) -> None:
        """After a drift, more windows go to review for a while (never fewer than the configured budget)."""
        if event.model_name != self.model_name:
            return
        s = self.settings
        budget = boosted_budget(s.review_budget_per_minute, event.boost_budget_per_minute, s.drift_budget_per_minute)
        self.scorer.router.set_budget(budget)
        self.boost_until = now_ms + min(event.boost_seconds, s.drift_boost_seconds) * 1000
        log.info("drift (%s): review budget %d/min for %d s", event.signal, budget,
                 (self.boost_until - now_ms) // 1000)

    def _prepare(self, windows: list[Window]) -> ScoringBatch:
        """A batch for the model in service (its windows normalised per device first, where configured)."""
        if self.model.adapt(windows) and self.unadapted_warned != self.model.version:  # per-device input normalisation
            self.unadapted_warned = self.model.version
            log.warning("%s v%d has no input mean and deviation (%s): windows are served as their devices sent them, "
                        "not normalised per device", self.model_name, self.model.version,
                        "a cold start's version 0" if self.model.version == 0 else "its graph has no mean/std")
        return self.scorer.prepare(windows)

    def _publish(self, batch: ScoringBatch, now_ms: int) -> list[Outgoing]:
        """The outputs of a batch the model has run over: predictions, review requests, forecasts, unlabeled
        windows, dead letters for windows it could not score, and a drift event when confidence falls."""
        if self.boost_until is not None and now_ms >= self.boost_until:
            self.scorer.router.set_budget(self.settings.review_budget_per_minute)
            self.boost_until = None
        windows = batch.windows
        predictions, reviews, forecasts, unscored = self.scorer.publish(batch, now_ms)
        t = self.tally
        t.last_batch_size, t.last_inference_ms = len(windows), batch.seconds * 1000.0
        t.batches += 1
        t.inference_us_total += int(batch.seconds * 1e6)
        t.predictions += len(predictions)
        t.review_requests += len(reviews)
        t.anomalies += sum(r.reason == "anomaly" for r in reviews)
        t.forecasts += len(forecasts)
        out = [Outgoing(self.topics.predictions, p.device_id, p.encode()) for p in predictions]
        out += [Outgoing(self.topics.review_requests, r.review_id, r.encode()) for r in reviews]
        out += [Outgoing(self.topics.forecasts, f.device_id, f.encode()) for f in forecasts]
        out += self._unlabeled(windows, unscored)
        for window in unscored:
            t.unscored_windows += 1
            letter = DeadLetter(self.topics.readings, -1, -1,
                                f"model {self.model_name} v{self.model.version} gave no finite probabilities for "
                                f"the window of {window.device_id} ending at {window.end}", "", "values",
                                "inference", now_ms, self.model_name)
            out.append(dead_letter_out(self.topics.dead_letters, letter))
        confidences = [p.confidence for p in predictions if p.confidence is not None]
        if self.watch is not None and confidences:
            event = self.watch.observe(confidences, self.model.version, now_ms)
            if event is not None:  # more labels where the model is unsure; operators see it on drift-events
                self.boost(event, now_ms)
                t.confidence_drifts += 1
                out.append(Outgoing(self.topics.drift_events, self.model_name, event.encode()))
        return out

    def _unlabeled(self, windows: list[Window], unscored: list[Window]) -> list[Outgoing]:
        """The share of windows the learning side trains the model's self-supervised heads on (none for a
        model that only classifies)."""
        spec = self.model.spec
        if not self.sampler.share or not (spec.has("anomaly") or spec.has("forecast")):
            return []
        self.sampler.horizon = spec.horizon if spec.has("forecast") else 0
        skip = {id(w) for w in unscored}
        out = []
        for window in windows:
            if id(window) not in skip:
                out += self.sampler.offer(window, self.model_name, self.model.version, list(spec.channels))
        self.tally.unlabeled_windows += len(out)
        return [Outgoing(self.topics.windows, self.model_name, sample.encode()) for sample in out]

    def report(self) -> None:
        """Append the model's own throughput inside the job to ``stats_file`` (if set)."""
        s = self.scorer.stats
        if s.batches and self.stats_file:
            with open(self.stats_file, "a") as fh:
                fh.write(orjson.dumps({"at": time.time(), "windows": s.windows, "batches": s.batches,
                                       "model_seconds": s.inference_s, "model_cpu_seconds": s.inference_cpu_s,
                                       "model_runqueue_seconds": s.inference_runqueue_s,
                                       "provider": self.model.provider}).decode() + "\n")

    @classmethod
    def for_tests(cls, max_batch: int = 4, **settings) -> "InferenceShard":
        """A shard around a tiny fixed model of 2 channels, window 4 and classes a/b (docs and tests)."""
        from operators.serving_model import fixed_model

        cfg = ServingSettings(window=4, stride=1, max_batch=max_batch, **settings)
        return cls(cfg, "toy", Topics(), fixed_model("toy", 1), lambda s: fixed_model(s.model_name, s.version))

    def example_window(self, device_id: str, end: int) -> Window:
        spec = self.model.spec
        return Window(device_id, end - spec.window + 1, end, np.zeros((spec.window, spec.n_channels), np.float32),
                      None, end)
