"""Score a micro-batch of windows: one prediction each, and review requests where routed."""

from __future__ import annotations

import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from operators.device_baseline import DeviceScoreBaseline
from operators.routing import ReviewRouter
from operators.serving_model import ServingModel
from operators.windowing import Window
from schemas import Forecast, Prediction, ReviewRequest


def review_id_for(window: Window) -> str:
    """Stable id of a window's review request (same window, same id after a replay)."""
    return f"{window.device_id}:{window.end}"


_SCHEDSTAT = threading.local()  # per thread: its open /proc/thread-self/schedstat


def thread_runqueue_s() -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a CPU (Linux's
    ``/proc/thread-self/schedstat``, kept open per thread: it is read twice per batch); None where the
    kernel does not report it.

    >>> first = thread_runqueue_s(); later = thread_runqueue_s()  # the same thread's figure, read again
    >>> first is None or later >= first >= 0.0
    True
    """
    try:
        fd = getattr(_SCHEDSTAT, "fd", None)
        if fd is None:
            fd = _SCHEDSTAT.fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class ScoreStats:
    """Where the model calls' time went: ``inference_s`` of wall-clock time, of which
    ``inference_cpu_s`` on a CPU (ONNX Runtime with one intra-op thread computes on the calling
    thread) and ``inference_runqueue_s`` waiting for one (other threads and processes had it)."""

    batches: int = 0
    windows: int = 0
    inference_s: float = 0.0
    inference_cpu_s: float = 0.0
    inference_runqueue_s: float = 0.0


@dataclass
class ScoringBatch:
    """Windows on their way through the model: stacked (``values``), with the versions that score them;
    ``outputs`` (by output name), ``shadow_probs`` and ``seconds`` once :meth:`WindowScorer.run` has run."""

    windows: list[Window]
    values: np.ndarray
    model: ServingModel
    shadow: ServingModel | None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    shadow_probs: np.ndarray | None = None
    seconds: float = 0.0


def _tops(model: ServingModel, probs: np.ndarray | None, anomaly: np.ndarray | None = None, n: int = 0
          ) -> tuple[ServingModel, np.ndarray, list[bool], list[int]]:
    """A model's probabilities for a batch (of ``n`` windows; none from a model that does not classify) with,
    per window, whether they (and its anomaly score) are finite and the top class."""
    if probs is None:
        probs = np.ones((n, 1), np.float32)
    finite = np.isfinite(probs).all(axis=1)
    if anomaly is not None:
        finite &= np.isfinite(anomaly)
    best = np.where(finite, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), 0)
    return model, probs, finite.tolist(), best.tolist()


class WindowScorer:
    """Runs the model over a batch of windows and routes unsure ones to review.

    With a ``shadow`` (a newer version in its shadow phase) every batch is scored by it too; a window
    the two classify differently is asked about (reason ``disagreement``), and every review request
    names the other version's answer (``shadow_predicted``, ``shadow_version``), so the learning job
    can compare the two on the same answered windows. The shadow's answers are published only for the
    ``canary_share`` of devices (by a hash of the device id): those devices are served by it, and their
    requests name the version in service as the other one.

    A model with an anomaly head gives every prediction its score, and a window scoring at least
    ``anomaly_threshold`` is asked about (reason ``anomaly``); with a ``device_baseline`` the score is first
    put on each device's own scale (:class:`~operators.device_baseline.DeviceScoreBaseline`). A model with
    a forecast head gives a :class:`~schemas.Forecast` per window (the third list of :meth:`score_all`).
    """

    def __init__(self, model: ServingModel, router: ReviewRouter, canary_share: float = 0.0,
                 anomaly_threshold: float = 3.0, device_baseline: DeviceScoreBaseline | None = None) -> None:
        self.model = model
        self.router = router
        self.stats = ScoreStats()
        self.shadow: ServingModel | None = None
        self.canary_share = canary_share
        self.anomaly_threshold = anomaly_threshold
        self.device_baseline = device_baseline

    def is_canary(self, device_id: str) -> bool:
        """Whether a device is served by the version in its shadow phase (while there is one).

        >>> from operators.serving_model import fixed_model
        >>> scorer = WindowScorer(fixed_model("m", 1), None, canary_share=0.5)
        >>> sum(scorer.is_canary(f"device-{i}") for i in range(1000))
        500
        """
        return zlib.crc32(device_id.encode() + b"#canary") / 0xFFFFFFFF < self.canary_share

    def swap(self, model: ServingModel) -> None:
        """Serve a new version from the next batch on (the caller has verified it)."""
        self.model = model

    def score(self, windows: list[Window], now_ms: int, clock: Callable[[], int] | None = None
              ) -> tuple[list[Prediction], list[ReviewRequest], list[Window]]:
        """Predictions, review requests, and the windows the model gave no finite probabilities for
        (never published as predictions; the caller dead-letters them)."""
        predictions, reviews, _, unscored = self.score_all(windows, now_ms, clock)
        return predictions, reviews, unscored

    def score_all(self, windows: list[Window], now_ms: int, clock: Callable[[], int] | None = None
                  ) -> tuple[list[Prediction], list[ReviewRequest], list[Forecast], list[Window]]:
        """:meth:`score`, with the forecasts of a model that has a forecast head."""
        if not windows:
            return [], [], [], []
        return self.publish(self.run(self.prepare(windows)), now_ms, clock)

    def prepare(self, windows: list[Window]) -> ScoringBatch:
        """A batch of windows (at least one) for :meth:`run`, with the versions in service now."""
        return ScoringBatch(windows, np.stack([w.values for w in windows]), self.model, self.shadow)

    def run(self, batch: ScoringBatch) -> ScoringBatch:
        """The model calls of a batch and nothing else (a thread of their own may make them: they touch no
        state but the time counters)."""
        model = batch.model
        waited = thread_runqueue_s()
        started, started_cpu = time.perf_counter(), time.thread_time()
        heads = model.spec.tasks != ("classify",)
        batch.outputs = (model.runner.predict(batch.values) if heads
                         else {"probabilities": model.runner.predict_proba(batch.values)})
        batch.seconds = time.perf_counter() - started
        self.stats.inference_s += batch.seconds
        self.stats.inference_cpu_s += time.thread_time() - started_cpu
        waited_after = thread_runqueue_s()
        if waited is not None and waited_after is not None:
            self.stats.inference_runqueue_s += waited_after - waited
        self.stats.batches += 1
        self.stats.windows += len(batch.windows)
        if batch.shadow is not None and batch.outputs.get("probabilities") is not None:
            batch.shadow_probs = batch.shadow.runner.predict_proba(batch.values)
        return batch

    def publish(self, batch: ScoringBatch, now_ms: int, clock: Callable[[], int] | None = None
                ) -> tuple[list[Prediction], list[ReviewRequest], list[Forecast], list[Window]]:
        """What a batch the model has run over gives: predictions, review requests, forecasts, and the windows
        it gave no finite probabilities for."""
        windows, model, outputs = batch.windows, batch.model, batch.outputs
        probs, anomaly, forecast = outputs.get("probabilities"), outputs.get("anomaly"), outputs.get("forecast")
        if probs is None and anomaly is None:  # a cold start of a model that does not classify: nothing to say yet
            return [], [], [], []
        classifies = probs is not None
        shadow = batch.shadow if classifies else None
        scored = [_tops(model, probs, anomaly, len(windows))]
        if shadow is not None:
            scored.append(_tops(shadow, batch.shadow_probs))
        # the probabilities published, to 6 decimals, rounded for the whole batch at once
        rounded = [np.round(np.asarray(rows, np.float64), 6).tolist() if classifies else None
                   for _, rows, _, _ in scored]
        emitted = int(time.time() * 1000) if clock is None else clock()
        predictions, reviews, forecasts, unscored = [], [], [], []
        for i, window in enumerate(windows):
            mine = 1 if shadow is not None and self.canary_share and self.is_canary(window.device_id) else 0
            served, rows, finite, best = scored[mine]
            if not finite[i]:
                unscored.append(window)
                continue
            other = scored[1 - mine][0] if shadow is not None else None
            other_said = other.spec.classes[scored[1 - mine][3][i]] if other is not None else None
            row, top = rows[i], best[i]
            label = served.spec.classes[top] if classifies else None
            confidence = float(row[top]) if classifies else None
            probabilities = dict(zip(served.spec.classes, rounded[mine][i])) if classifies else None
            score = round(float(anomaly[i]), 4) if anomaly is not None and served is model else None
            if score is not None and self.device_baseline is not None:
                score = self.device_baseline.adjust(window.device_id, served.version, score)
            predictions.append(Prediction(
                device_id=window.device_id, window_end=window.end, window_start=window.start,
                label=label, confidence=confidence, probabilities=probabilities,
                model_name=served.name, model_version=served.version,
                latency_ms=float(max(0, emitted - window.ingest_ms)), emitted_at=emitted,
                truth=window.truth, anomaly=score))
            if forecast is not None and served is model:
                forecasts.append(forecast_of(window, forecast[i], served, emitted))
            review_id = review_id_for(window)
            reason = self.router.decide(review_id, confidence if classifies else 1.0, now_ms,
                                        row if classifies else None, window.device_id, label,
                                        disagree=other_said is not None and other_said != label,
                                        anomalous=score is not None and score >= self.anomaly_threshold)
            if reason is not None:
                reviews.append(ReviewRequest(
                    review_id=review_id, device_id=window.device_id, window_start=window.start,
                    window_end=window.end, channels=list(served.spec.channels),
                    values=np.round(window.values, 5).tolist(), predicted=label,
                    confidence=confidence, probabilities=probabilities,
                    model_version=served.version, reason=reason, created_at=emitted, model_name=served.name,
                    shadow_predicted=other_said, shadow_version=other.version if other is not None else None,
                    anomaly=score, typical_range=served.spec.extra.get("normal_range") if score is not None else None))
        return predictions, reviews, forecasts, unscored


def forecast_of(window: Window, rows: np.ndarray, model: ServingModel, emitted: int) -> Forecast:
    """The forecast record of one window: its samples are spaced like the window's (its time span over its
    length, or the model's declared sample rate for a window of one instant)."""
    n = len(window.values)
    interval = (window.end - window.start) / (n - 1) if n > 1 and window.end > window.start else \
        1000.0 / float(model.spec.extra.get("sample_rate_hz", 10.0))
    return Forecast(window.device_id, window.end, round(float(interval), 3), list(model.spec.channels),
                    np.round(rows.astype(np.float64), 5).tolist(), model.name, model.version, emitted)
