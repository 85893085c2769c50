"""Simulated labelers for demos and tests: answer review requests from the replayed ground truth.

The ground truth of a window travels on its prediction (``truth``); a review request has the
same id as ``device:window_end``. An answer is given ``delay_ms`` after both are known, wrong
with probability ``error_rate`` (a uniformly chosen other class).

>>> lab = SimulatedLabelers(["run", "walk"], delay_ms=0, error_rate=0.0, seed=0)
>>> lab.on_prediction({"device_id": "d", "window_end": 5, "truth": "walk"}, now_ms=0)
>>> lab.on_request({"review_id": "d:5"}, now_ms=1)
>>> [(a.review_id, a.label, a.status) for a in lab.due(now_ms=1)]
[('d:5', 'walk', 'answered')]
"""

from __future__ import annotations

import heapq

import numpy as np

from schemas import Label


class SimulatedLabelers:
    def __init__(self, classes: list[str], delay_ms: int = 500, error_rate: float = 0.0, n_labelers: int = 3,
                 seed: int = 0) -> None:
        self.classes = list(classes)
        self.delay_ms, self.error_rate = delay_ms, error_rate
        self.labelers = [f"sim-labeler-{i}" for i in range(n_labelers)]
        self.rng = np.random.default_rng(seed)
        self.truth: dict[str, str | None] = {}
        self.waiting: set[str] = set()
        self.queue: list[tuple[int, str]] = []
        self.answered = 0

    def on_prediction(self, prediction: dict, now_ms: int) -> None:
        review_id = f"{prediction['device_id']}:{prediction['window_end']}"
        self.truth[review_id] = prediction.get("truth")
        if review_id in self.waiting:
            self._schedule(review_id, now_ms)

    def on_request(self, request: dict, now_ms: int) -> None:
        review_id = request["review_id"]
        if review_id in self.truth:
            self._schedule(review_id, now_ms)
        else:
            self.waiting.add(review_id)

    def _schedule(self, review_id: str, now_ms: int) -> None:
        self.waiting.discard(review_id)
        heapq.heappush(self.queue, (now_ms + self.delay_ms, review_id))

    def due(self, now_ms: int) -> list[Label]:
        out = []
        while self.queue and self.queue[0][0] <= now_ms:
            _, review_id = heapq.heappop(self.queue)
            truth = self.truth.pop(review_id, None)
            labeler = self.labelers[int(self.rng.integers(len(self.labelers)))]
            if truth is None or truth not in self.classes:
                out.append(Label(review_id, "unsure", labeler, now_ms, "unsure"))
                continue
            answer = truth
            if self.rng.random() < self.error_rate:
                answer = str(self.rng.choice([c for c in self.classes if c != truth]))
            out.append(Label(review_id, answer, labeler, now_ms))
            self.answered += 1
        return out
