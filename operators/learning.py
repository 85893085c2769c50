"""The learning loop for labeled windows: prequential check, drift monitor, holdout, online
update, and a validation gate that decides when a candidate becomes a new version; and
:class:`VersionPublisher`, which turns what the loop decides into registry versions,
announcements and drift events.

Plain Python: the Flink learning job keeps a loop in keyed state (it pickles) and calls the publisher.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import logging

import numpy as np
import torch

from model.network import WindowTransformer
from model.online import OnlineTrainer
from model.registry import ModelRegistry
from model.signing import announcement
from model.spec import ModelSpec
from model.train import load_network, publish_version, weights_bytes
from operators.drift import DriftMonitor
from operators.gate import GateDecision, ValidationGate
from operators.label_join import LabeledWindow
from operators.outgoing import Outgoing
from schemas import DriftEvent, Topics
from settings import LearningSettings, ServingSettings

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    net: torch.nn.Module
    decision: GateDecision
    labeled: int
    trigger_answered_at: int  # when the answer that completed this candidate was given (epoch ms)


def _predictor(net: torch.nn.Module):
    def predict(X: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(net.eval()(torch.as_tensor(X, dtype=torch.float32)), -1).numpy()
    return predict


COLD_START_NORMALISATION = 32  # training windows that fit a cold-started network's input normalisation


def _majority(labels: list[int], n_classes: int):
    """A predictor that always answers the most common of ``labels`` (the baseline a first version must beat)."""
    common = np.bincount(labels, minlength=n_classes).argmax() if labels else 0

    def predict(X: np.ndarray) -> np.ndarray:
        return np.tile(np.eye(n_classes)[common], (len(X), 1))
    return predict


class LearningLoop:
    """Learns from labeled windows and proposes candidates that pass the gate.

    ``serving`` is the network of the version in service (what the gate compares against);
    after a candidate is published, :meth:`accepted` makes it the new reference. ``serving=None``
    is a cold start: a fresh network (its input normalisation fitted on the first
    ``COLD_START_NORMALISATION`` training windows) whose first version must beat the majority class
    of the held-out answers, not merely match it.
    """

    def __init__(self, serving: torch.nn.Module | None, spec: ModelSpec, version: int,
                 config: LearningSettings | None = None) -> None:
        self.config = config or LearningSettings()
        self.spec = spec
        self.index = {c: i for i, c in enumerate(spec.classes)}
        if serving is None:
            torch.manual_seed(self.config.seed)
            start = WindowTransformer(spec)
            self.serving = None
            self.unnormalised: list | None = []
        else:
            start = serving
            self.serving = copy.deepcopy(serving).eval()
            self.unnormalised = None
        self.version = version
        self.trainer = OnlineTrainer(copy.deepcopy(start), spec.n_classes, self.config)
        self.gate = ValidationGate(self.config.gate_margin, self.config.min_holdout, self.config.holdout_size,
                                   self.config.gate_z)
        self.drift = DriftMonitor()
        self.labeled = 0
        self.correct = 0
        self.since_gate = 0
        self.drift_events = 0
        self.new_drifts: list[str] = []

    def learn(self, item: LabeledWindow) -> Candidate | None:
        label = self.index[item.label]  # the join already refused unknown classes
        self.labeled += 1
        hit = item.predicted == item.label  # prequential: what serving said before the answer came
        self.correct += int(hit)
        if "error" in self.drift.update(correct=hit):
            self.drift_events += 1
            self.new_drifts.append("error")
            self.trainer.consolidate()
        if zlib.crc32(item.review_id.encode()) % self.config.holdout_every == 0:
            self.gate.hold_out(item.values, label)
        else:
            self._train(item.values, label)
        self.since_gate += 1
        if self.since_gate < self.config.gate_every or self.trainer.updates == 0:
            return None
        self.since_gate = 0
        self.trainer.update()
        if self.serving is None:  # cold start: the first version must beat the majority class
            baseline = _majority([label for _, label in self.gate.windows], self.spec.n_classes)
            decision = self.gate.judge(_predictor(self.trainer.net), baseline, must_beat=True)
        else:
            decision = self.gate.judge(_predictor(self.trainer.net), _predictor(self.serving))
        if not decision.accept:
            return None
        return Candidate(self.trainer.snapshot(), decision, self.labeled, item.answered_at)

    def _train(self, values: np.ndarray, label: int) -> None:
        if self.unnormalised is None:
            self.trainer.learn_one(values, label)
            return
        self.unnormalised.append((np.asarray(values, np.float32), label))
        if len(self.unnormalised) >= COLD_START_NORMALISATION:
            self.trainer.net.set_normalisation(np.stack([w for w, _ in self.unnormalised]))
            waiting, self.unnormalised = self.unnormalised, None
            for window, known in waiting:
                self.trainer.learn_one(window, known)

    def take_drifts(self) -> list[str]:
        """Drift signals detected since the last call (each to be published once)."""
        out, self.new_drifts = self.new_drifts, []
        return out

    def accepted(self, candidate: Candidate, version: int) -> None:
        self.serving = copy.deepcopy(candidate.net).eval()
        self.version = version

    @property
    def prequential_accuracy(self) -> float:
        return self.correct / self.labeled if self.labeled else float("nan")


def loop_from_registry(registry: ModelRegistry, model_name: str, config: LearningSettings,
                       declared_spec: dict | None = None) -> LearningLoop:
    """A fresh loop that starts from the registry's newest version of ``model_name``; with no version
    and a ``declared_spec`` (the configuration's ``[models.<name>]``), a cold start."""
    if declared_spec is not None and registry.latest_version(model_name) is None:
        return LearningLoop(None, ModelSpec.from_dict(declared_spec), 0, config)
    loaded = registry.load(model_name)
    spec = ModelSpec.from_dict(loaded.metadata.spec)
    return LearningLoop(load_network(spec, loaded.weights_bytes), spec, loaded.metadata.version, config)


@dataclass
class Learned:
    """What one labeled window led to: records to publish, and the version accepted (with its weights)."""

    outgoing: list[Outgoing]
    accepted: tuple[int, bytes] | None = None


class VersionPublisher:
    """Feeds labeled windows to a :class:`LearningLoop`; publishes each candidate that passes the gate
    as the registry's next version with its metrics, and announces it and every drift signal.

    Version numbers come from the registry, so restarts and other publishers never reuse one.
    """

    def __init__(self, registry: ModelRegistry, model_name: str, topics: Topics,
                 serving: ServingSettings = ServingSettings(), signing_key: str = "") -> None:
        self.registry, self.model_name, self.topics, self.serving = registry, model_name, topics, serving
        self.signing_key = signing_key
        self.published = 0
        self.drift_events = 0

    def learn(self, loop: LearningLoop, item: LabeledWindow, now_ms: int) -> Learned:
        candidate = loop.learn(item)
        out = []
        for signal in loop.take_drifts():
            event = DriftEvent(self.model_name, signal, now_ms, loop.version, self.serving.drift_budget_per_minute,
                               self.serving.drift_boost_seconds, loop.drift.error_rate)
            log.info("drift (%s) detected after %d labeled windows", signal, loop.labeled)
            self.drift_events += 1
            out.append(Outgoing(self.topics.drift_events, self.model_name, event.encode()))
        if candidate is None:
            return Learned(out)
        d = candidate.decision
        metrics = {"holdout_accuracy": d.candidate_accuracy, "serving_holdout_accuracy": d.serving_accuracy,
                   "holdout_windows": float(d.samples), "prequential_accuracy": loop.prequential_accuracy,
                   "labeled_windows": float(loop.labeled), "drift_events": float(loop.drift_events),
                   "trigger_label_at_ms": float(candidate.trigger_answered_at)}
        held = list(loop.gate.windows)
        calibration = (np.stack([w for w, _ in held]), np.asarray([label for _, label in held])) if held else None
        meta = publish_version(self.registry, self.model_name, candidate.net, loop.spec, metrics,
                               parent_version=loop.version or None, data_seen=loop.labeled,
                               note=f"online{' (cold start)' if not loop.version else ''}: {d.reason}",
                               calibration=calibration)
        loop.accepted(candidate, meta.version)
        self.published += 1
        snapshot = announcement(self.registry, self.model_name, meta.version, self.signing_key)
        log.info("published %s v%d %d ms after the answer that completed it: %s", self.model_name, meta.version,
                 now_ms - candidate.trigger_answered_at, d.reason)
        out.append(Outgoing(self.topics.model_snapshots, self.model_name, snapshot.encode()))
        return Learned(out, (meta.version, weights_bytes(candidate.net)))
