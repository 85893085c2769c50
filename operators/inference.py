"""Score a micro-batch of windows: one prediction each, and review requests where routed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from operators.routing import ReviewRouter
from operators.serving_model import ServingModel
from operators.windowing import Window
from schemas import Prediction, ReviewRequest


def review_id_for(window: Window) -> str:
    """Stable id of a window's review request (same window, same id after a replay)."""
    return f"{window.device_id}:{window.end}"


def thread_runqueue_s() -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a CPU (Linux's
    ``/proc/thread-self/schedstat``); None where the kernel does not report it."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as fh:
            return int(fh.read().split()[1]) / 1e9
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


class WindowScorer:
    """Runs the model over a batch of windows and routes unsure ones to review.

    With a ``shadow`` (a newer version in its shadow phase) every batch is scored by it too: its
    answers are never published as predictions, but a window it classifies differently is asked
    about (reason ``disagreement``), and every review request says what it predicted, so the
    learning job can compare the two versions on the same answered windows.
    """

    def __init__(self, model: ServingModel, router: ReviewRouter) -> None:
        self.model = model
        self.router = router
        self.stats = ScoreStats()
        self.shadow: ServingModel | None = None

    def swap(self, model: ServingModel) -> None:
        """Serve a new version from the next batch on (the caller has verified it)."""
        self.model = model

    def score(self, windows: list[Window], now_ms: int, clock: Callable[[], int] | None = None
              ) -> tuple[list[Prediction], list[ReviewRequest], list[Window]]:
        """Predictions, review requests, and the windows the model gave no finite probabilities for
        (never published as predictions; the caller dead-letters them)."""
        if not windows:
            return [], [], []
        model = self.model

        batch = np.stack([w.values for w in windows])
        waited = thread_runqueue_s()
        started, started_cpu = time.perf_counter(), time.thread_time()
        probs = model.runner.predict_proba(batch)
        self.stats.inference_s += time.perf_counter() - started
        self.stats.inference_cpu_s += time.thread_time() - started_cpu
        waited_after = thread_runqueue_s()
        if waited is not None and waited_after is not None:
            self.stats.inference_runqueue_s += waited_after - waited
        self.stats.batches += 1
        self.stats.windows += len(windows)
        emitted = int(time.time() * 1000) if clock is None else clock()
        classes = model.spec.classes
        finite = np.isfinite(probs).all(axis=1)
        best = np.where(finite, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), 0)
        shadow = self.shadow
        shadow_said = ([shadow.spec.classes[k] for k in np.nan_to_num(shadow.runner.predict_proba(batch),
                                                                        nan=-1.0).argmax(axis=1)]
                       if shadow is not None else [None] * len(windows))
        predictions, reviews, unscored = [], [], []
        for window, row, top, ok, other in zip(windows, probs, best, finite, shadow_said):
            if not ok:
                unscored.append(window)
                continue
            confidence = float(row[top])
            probabilities = {c: round(float(p), 6) for c, p in zip(classes, row)}
            predictions.append(Prediction(
                device_id=window.device_id, window_end=window.end, window_start=window.start,
                label=classes[top], confidence=confidence, probabilities=probabilities,
                model_name=model.name, model_version=model.version,
                latency_ms=float(max(0, emitted - window.ingest_ms)), emitted_at=emitted,
                truth=window.truth))
            review_id = review_id_for(window)
            reason = self.router.decide(review_id, confidence, now_ms, row, window.device_id, classes[top],
                                        disagree=other is not None and other != classes[top])
            if reason is not None:
                reviews.append(ReviewRequest(
                    review_id=review_id, device_id=window.device_id, window_start=window.start,
                    window_end=window.end, channels=list(model.spec.channels),
                    values=np.round(window.values, 5).tolist(), predicted=classes[top],
                    confidence=confidence, probabilities=probabilities,
                    model_version=model.version, reason=reason, created_at=emitted, model_name=model.name,
                    shadow_predicted=other, shadow_version=shadow.version if shadow is not None else None))
        return predictions, reviews, unscored
