"""The learning loop for labeled windows: prequential check, drift monitor, holdout, online
update, and a validation gate that decides when a candidate becomes a new version.

Plain Python: the Flink learning job keeps one of these in keyed state (it pickles).
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from model.online import OnlineConfig, OnlineTrainer
from model.spec import ModelSpec
from operators.drift import DriftMonitor
from operators.gate import GateDecision, ValidationGate
from operators.label_join import LabeledWindow


@dataclass(frozen=True)
class LearningConfig:
    lr: float = 1e-3
    batch_size: int = 8
    replay_ratio: float = 1.0
    ewc_strength: float = 0.0
    reservoir_capacity: int = 2000
    holdout_every: int = 4  # 1 labeled window in this many is held out for the gate, never trained on
    gate_every: int = 32  # labeled windows between gate checks
    gate_margin: float = 0.0
    min_holdout: int = 30
    holdout_size: int = 300
    drift_budget_per_minute: int = 600  # review budget serving uses for a while after a drift
    drift_boost_seconds: int = 120

    def online(self) -> OnlineConfig:
        return OnlineConfig(lr=self.lr, batch_size=self.batch_size, replay_ratio=self.replay_ratio,
                            ewc_strength=self.ewc_strength, reservoir_capacity=self.reservoir_capacity)


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


class LearningLoop:
    """Learns from labeled windows and proposes candidates that pass the gate.

    ``serving`` is the network of the version in service (what the gate compares against);
    after a candidate is published, :meth:`accepted` makes it the new reference.
    """

    def __init__(self, serving: torch.nn.Module, spec: ModelSpec, version: int,
                 config: LearningConfig | None = None) -> None:
        self.config = config or LearningConfig()
        self.spec = spec
        self.index = {c: i for i, c in enumerate(spec.classes)}
        self.serving = copy.deepcopy(serving).eval()
        self.version = version
        self.trainer = OnlineTrainer(copy.deepcopy(serving), spec.n_classes, self.config.online())
        self.gate = ValidationGate(self.config.gate_margin, self.config.min_holdout, self.config.holdout_size)
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
            self.trainer.learn_one(item.values, label)
        self.since_gate += 1
        if self.since_gate < self.config.gate_every or self.trainer.updates == 0:
            return None
        self.since_gate = 0
        self.trainer.update()
        decision = self.gate.judge(_predictor(self.trainer.net), _predictor(self.serving))
        if not decision.accept:
            return None
        return Candidate(self.trainer.snapshot(), decision, self.labeled, item.answered_at)

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
