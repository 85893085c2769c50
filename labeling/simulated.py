"""Simulated labelers for demos and tests: answer review requests from the replayed ground truth.

The ground truth of a window travels on its prediction (``truth``); a review request has the
same id as ``device:window_end``. An answer is given ``delay_ms`` after both are known, wrong
with probability ``error_rate`` (a uniformly chosen other class). Truths and requests still waiting
for their other half are remembered up to ``memory`` each, the oldest forgotten first: most windows
are never reviewed, so their truths must not pile up.

>>> lab = SimulatedLabelers(["run", "walk"], delay_ms=0, error_rate=0.0, seed=0)
>>> lab.on_prediction({"device_id": "d", "window_end": 5, "truth": "walk"}, now_ms=0)
>>> lab.on_request({"review_id": "d:5"}, now_ms=1)
>>> [(a.review_id, a.label, a.status) for a in lab.due(now_ms=1)]
[('d:5', 'walk', 'answered')]

A truth the model does not have is answered "not sure", unless some of the labelers may name new
classes (``creators``): one of them then names it (``new_class``). Once a version with the class
serves, its requests' probabilities name it and every labeler uses it.

>>> lab = SimulatedLabelers(["run"], delay_ms=0, n_labelers=2, creators={"sim-labeler-1"})
>>> lab.on_prediction({"device_id": "d", "window_end": 5, "truth": "walk"}, now_ms=0)
>>> lab.on_request({"review_id": "d:5", "probabilities": {"run": 1.0}}, now_ms=1)
>>> [(a.label, a.labeler, a.new_class) for a in lab.due(now_ms=1)]
[('walk', 'sim-labeler-1', True)]
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict

import numpy as np
import orjson

from schemas import Label, Topics


class SimulatedLabelers:
    """Answers review requests with the truth their window's prediction carried."""

    def __init__(self, classes: list[str], delay_ms: int = 500, error_rate: float = 0.0, n_labelers: int = 3,
                 seed: int = 0, memory: int = 50_000, model_classes: dict[str, list[str]] | None = None,
                 creators: frozenset[str] | set[str] = frozenset()) -> None:
        self.classes = list(classes)
        self.model_classes = {k: list(v) for k, v in (model_classes or {}).items()}  # several models ask
        self.model_of: dict[str, str] = {}  # review id -> the model that asked
        self.delay_ms, self.error_rate, self.memory = delay_ms, error_rate, memory
        self.labelers = [f"sim-labeler-{i}" for i in range(n_labelers)]
        self.creators = [name for name in self.labelers if name in creators]
        self.asked_with: dict[str, list[str]] = {}  # review id -> the classes of the version that asked
        self.rng = np.random.default_rng(seed)
        self.truth: OrderedDict[str, str | None] = OrderedDict()
        self.waiting: OrderedDict[str, None] = OrderedDict()
        self.queue: list[tuple[int, str]] = []
        self.answered = 0

    def _remember(self, store: OrderedDict, key: str, value) -> None:
        store[key] = value
        while len(store) > self.memory:
            store.popitem(last=False)

    def on_prediction(self, prediction: dict, now_ms: int) -> None:
        review_id = f"{prediction['device_id']}:{prediction['window_end']}"
        self._remember(self.truth, review_id, prediction.get("truth"))
        if review_id in self.waiting:
            self._schedule(review_id, now_ms)

    def on_request(self, request: dict, now_ms: int) -> None:
        review_id = request["review_id"]
        if isinstance(request.get("probabilities"), dict):
            self._remember(self.asked_with, review_id, list(request["probabilities"]))
        if request.get("model_name") in self.model_classes:
            self._remember(self.model_of, review_id, request["model_name"])
        if review_id in self.truth:
            self._schedule(review_id, now_ms)
        else:
            self._remember(self.waiting, review_id, None)

    def _schedule(self, review_id: str, now_ms: int) -> None:
        self.waiting.pop(review_id, None)
        heapq.heappush(self.queue, (now_ms + self.delay_ms, review_id))

    def due(self, now_ms: int) -> list[Label]:
        out = []
        while self.queue and self.queue[0][0] <= now_ms:
            _, review_id = heapq.heappop(self.queue)
            truth = self.truth.pop(review_id, None)
            classes = self.model_classes.get(self.model_of.pop(review_id, ""), self.classes)
            classes = list(dict.fromkeys([*classes, *self.asked_with.pop(review_id, [])]))
            labeler = self.labelers[int(self.rng.integers(len(self.labelers)))]
            if truth is not None and truth not in classes and self.creators:
                creator = self.creators[int(self.rng.integers(len(self.creators)))]
                out.append(Label(review_id, truth, creator, now_ms, new_class=True))
                self.answered += 1
                continue
            if truth is None or truth not in classes:
                out.append(Label(review_id, "unsure", labeler, now_ms, "unsure"))
                continue
            answer = truth
            if self.rng.random() < self.error_rate:
                answer = str(self.rng.choice([c for c in classes if c != truth]))
            out.append(Label(review_id, answer, labeler, now_ms))
            self.answered += 1
        return out


def run_simulated_labelers(bootstrap: str, topics: Topics, classes: list[str], delay_ms: int = 500,
                           error_rate: float = 0.0, stop: threading.Event | None = None,
                           duration_s: float | None = None, model_classes: dict[str, list[str]] | None = None,
                           creators: frozenset[str] = frozenset()) -> int:
    """Answer review requests on a broker until ``stop`` is set or ``duration_s`` passes; returns answers given."""
    from kafka import KafkaProducer

    from infra.kafka_tools import TopicTail

    labelers = SimulatedLabelers(classes, delay_ms, error_rate, model_classes=model_classes, creators=creators)
    tail = TopicTail(bootstrap, [topics.predictions, topics.review_requests])
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    started = time.monotonic()
    try:
        while not (stop is not None and stop.is_set()):
            if duration_s is not None and time.monotonic() - started > duration_s:
                break
            now = int(time.time() * 1000)
            for record in tail.poll(100):
                try:
                    body = orjson.loads(record.value)
                    if record.topic == topics.predictions:
                        labelers.on_prediction(body, now)
                    else:
                        labelers.on_request(body, now)
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # malformed records are the jobs' to dead-letter; a labeler just skips them
            for label in labelers.due(int(time.time() * 1000)):
                producer.send(topics.labels, key=label.review_id.encode(), value=label.encode())
        producer.flush()
    finally:
        tail.close()
        producer.close()
    return labelers.answered
