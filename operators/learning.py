"""The learning loop for labeled windows: prequential check, drift monitor, holdout, online
update, and a validation gate that decides when a candidate becomes a new version; and
:class:`VersionPublisher`, which turns what the loop decides into registry versions,
announcements and drift events.

Plain Python: the Flink learning job keeps a loop in keyed state (it pickles) and calls the publisher.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections import deque
from dataclasses import dataclass, field, replace

import logging

import numpy as np
import torch

from model.calibration import MIN_WINDOWS, decision_shift, out_of_fold, softmax
from model.network import WindowTransformer
from model.online import OnlineTrainer
from model.registry import ArtifactError, ModelRegistry
from model.signing import announcement
from model.slda import LDA_FILE, StreamingLDA
from model.spec import ModelSpec
from model.train import load_network, publish_version, weights_bytes
from operators.drift import DriftMonitor
from operators.gate import GateDecision, ValidationGate
from operators.label_join import LabeledWindow
from operators.outgoing import Outgoing
from operators.rollback import Rollback, RollbackWatch
from operators.shadow import ShadowTrial, ShadowVerdict
from operators.ssl_gate import SelfSupervisedDecision, SelfSupervisedGate
from schemas import DriftEvent, Topics, WindowSample
from settings import LearningSettings, ServingSettings

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    net: torch.nn.Module
    decision: GateDecision | SelfSupervisedDecision  # the latter for a model that does not classify
    labeled: int
    trigger_answered_at: int  # when the answer (or unlabeled window) that completed this candidate came (epoch ms)
    lda: bytes | None = None  # the LDA head's statistics behind it (``head = "lda"``), kept with the version
    metrics: dict = field(default_factory=dict)  # more for its version's metrics (labeled anomalies' ranking)


def _logits(net: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net.eval()(torch.as_tensor(X, dtype=torch.float32)).double().numpy()


def _predictor(net: torch.nn.Module):
    """``net``'s class probabilities as its version serves them, as far as the class they pick goes: its raw
    outputs moved by the version's ``served_shift`` (:func:`with_shift`) when it has per-class biases."""
    def predict(X: np.ndarray) -> np.ndarray:
        logits = _logits(net, X)
        shift = getattr(net, "served_shift", None)
        return softmax(logits if shift is None or len(shift) != logits.shape[1] else logits + shift)
    return predict


def with_shift(net: torch.nn.Module, shift) -> torch.nn.Module:
    """``net`` (the weights of a published version) marked with what its per-class calibration biases add to
    its logits (``model.calibration.decision_shift``; None: it has none), so that the gate and the rollback
    watch judge the class the version serves, which a bias may change. Returns ``net``."""
    net.served_shift = None if shift is None else np.asarray(shift, np.float64)
    return net


def shift_of(net: torch.nn.Module) -> tuple[float, ...] | None:
    """The shift :func:`with_shift` marked ``net`` with, as a tuple (for the journal)."""
    shift = getattr(net, "served_shift", None)
    return None if shift is None else tuple(float(v) for v in shift)


COLD_START_NORMALISATION = 32  # training windows that fit a cold-started network's input normalisation
SSL_GATE_Z = 1.645  # the self-supervised gate's sign test when learning.gate_z is 0 (one-sided 95 %)
MIN_LABELED_ANOMALIES = 5  # labeled anomalies before the gate compares how versions rank them
ANOMALY_AUC_MARGIN = 0.05  # a candidate ranking labeled anomalies this much worse (PR-AUC) than serving is refused


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
        if self.serving is not None and self.config.distill_strength > 0:
            self.trainer.set_teacher(self.serving)  # learning without forgetting the version in service
        self.gate = ValidationGate(self.config.gate_margin, self.config.min_holdout, self.config.holdout_size,
                                   self.config.gate_z, self.config.gate_early_z)
        self.drift = DriftMonitor()
        self.labeled = 0
        self.correct = 0
        self.since_gate = 0
        self.drift_events = 0
        self.new_drifts: list[str] = []
        self.parent_net: torch.nn.Module | None = None  # the version before ``version``: rollback target
        self.watch = RollbackWatch(self.config.rollback_z, self.config.rollback_min_audits)
        self.due_rollback: Rollback | None = None
        self.last_published_at: int | None = None  # answer time of the last candidate published (a model that
        #                                            does not classify: the stream time, ``stream_clock``, then)
        self.stream_clock = 0  # the newest end time of an unlabeled window learned (the devices' clock, epoch ms)
        self.deferred = 0  # candidates the gate accepted that waited for the publish interval
        self.refused = 0  # candidates the gate judged on held-out windows and refused
        self.new_classes: list[str] = []  # classes labelers added, in order
        self.shadow: tuple[int, torch.nn.Module] | None = None  # (version, net) in its shadow phase
        self.trial: ShadowTrial | None = None
        self.due_verdict: ShadowVerdict | None = None
        self.ssl_gate = (SelfSupervisedGate(self.config.min_holdout, self.config.holdout_size,
                                            self.config.gate_z or SSL_GATE_Z)
                         if spec.has("anomaly") or spec.has("forecast") else None)
        self.unlabeled_seen = 0
        self.unlabeled_set_aside = 0  # unlabeled windows the version in service found abnormal: not learned
        self.called_normal: set[str] = set()  # devices a labeler said looked abnormal but are normal, until the
        #                                       next version (fitted with those answers) serves
        self.since_ssl_gate = 0
        self.anomalies: deque = deque(maxlen=500)  # windows people said are abnormal: kept to evaluate, not learned
        self.verdicts = {"normal": 0, "abnormal": 0}

    def learn(self, item: LabeledWindow | WindowSample) -> Candidate | None:
        """Learn one labeled window; returns a candidate when one passed the gate (none while a
        rollback is due: the next gate check compares against the version rolled back to). A class the
        model lacks (the join let it through: a labeler allowed to named it) grows the model first.
        An unlabeled window (``WindowSample``) goes to :meth:`learn_window`."""
        if isinstance(item, WindowSample):
            return self.learn_window(item)
        if item.verdict is not None:
            learned = self._learn_verdict(item)
            if not item.label:  # a window called normal was learned like an unlabeled one, and counts toward a check
                # on the stream's clock, as the unlabeled windows' checks: the answer's own time is the labeler's
                # clock, and a publish interval measured across the two clocks would be wrong by their offset
                return self._check_self_supervised(self.stream_clock) if learned else None
        if item.label not in self.index:
            self.add_class(item.label)
        label = self.index[item.label]
        self.labeled += 1
        hit = item.predicted == item.label  # prequential: what serving said before the answer came
        self.correct += int(hit)
        if item.reason == "audit" and item.model_version == self.version and self.parent_net is not None:
            old_right = self.spec.classes[int(_predictor(self.parent_net)(item.values[None]).argmax())] == item.label
            verdict = self.watch.observe(hit, old_right)  # the same live window, both versions
            if verdict is not None:
                self.due_rollback = verdict
        if self.trial is not None and self.due_verdict is None and item.shadow_predicted is not None:
            pair, other_right = (item.model_version, item.shadow_version), item.shadow_predicted == item.label
            if pair == (self.version, self.trial.version):  # served by the version in service, the shadow beside
                self.due_verdict = self.trial.observe(hit, other_right)
            elif pair == (self.trial.version, self.version):  # a canary device: served by the shadow
                self.due_verdict = self.trial.observe(other_right, hit)
        if "error" in self.drift.update(correct=hit):
            self.drift_events += 1
            self.new_drifts.append("error")
            self.trainer.consolidate()
            if self.config.gate_forgets_on_drift:
                self.gate.forget_held_out()
        if self._held_out(item):
            self.gate.hold_out(item.values, label)
        else:
            self._train(item.values, label)
        self.since_gate += 1
        if self.due_rollback is not None or self.shadow is not None:  # one candidate at a time in its shadow phase
            return None
        if self.since_gate < self.config.gate_every or self.trainer.updates == 0:
            return None
        self.since_gate = 0
        self.trainer.update()
        decision = self._judge()
        if not decision.accept:
            if not math.isnan(decision.candidate_accuracy):  # judged on held-out windows
                self.refused += 1
                log.info("candidate refused by the gate: %s", decision.reason)
            return None
        worse = self._self_supervised_worse()
        if worse is not None:
            log.info("candidate refused: its self-supervised heads are clearly worse (%s)", worse)
            return None
        return self._propose(decision, item.answered_at)

    def _judge(self) -> GateDecision:
        """The gate's decision on the learner's network against the version in service (on a cold start, against
        the majority class of the held-out answers, which it must beat), each judged by the class it serves."""
        candidate, out_of_fold = self._as_served()
        if self.serving is None:
            baseline = _majority([label for _, label in self.gate.windows], self.spec.n_classes)
            return self.gate.judge(candidate, baseline, must_beat=True, out_of_fold=out_of_fold)
        return self.gate.judge(candidate, _predictor(self.serving), out_of_fold=out_of_fold)

    def _as_served(self):
        """The candidate as the gate judges it, and whether it is called with the held-out labels: with
        ``calibration = "temperature_bias"`` or ``"auto"`` (and enough held-out windows for its version to get
        biases) the class it would serve depends on biases fitted on the held-out windows themselves, so each
        half of them is judged with the temperature and biases fitted on the other half (with "auto", when the
        biases would be chosen: ``model.calibration.out_of_fold``); else its raw outputs (a temperature alone
        never changes the class)."""
        net, mode = self.trainer.net, self.config.calibration
        if mode == "temperature" or len(self.gate.windows) < MIN_WINDOWS:
            return (lambda X: softmax(_logits(net, X))), False
        return (lambda X, y: softmax(out_of_fold(mode, _logits(net, X), y)[0])), True

    def _propose(self, decision: GateDecision | SelfSupervisedDecision, at: int) -> Candidate | None:
        """The candidate a gate accepted, unless it ranks labeled anomalies clearly worse than the version in
        service or must wait for the publish interval (``at``: when what completed it came)."""
        ranking, refusal = self._anomaly_ranking()
        if refusal:
            log.info("candidate refused: %s", refusal)
            return None
        if not self._deploy_now(decision, at):
            return None
        self.last_published_at = at
        lda = self.trainer.lda.to_bytes() if self.trainer.lda is not None else None
        return Candidate(self.trainer.snapshot(), decision, self.labeled, at, lda, ranking)

    def _learn_verdict(self, item: LabeledWindow) -> bool:
        """An anomaly question answered: ``normal`` windows are learned and replayed from now on (the pattern
        stops being flagged in later versions), ``abnormal`` ones kept to judge how versions rank them.
        Returns whether a window was learned."""
        if self.ssl_gate is None or not self.spec.has("anomaly"):
            return False
        self.verdicts[item.verdict] += 1
        window = np.asarray(item.values, np.float32)
        if item.verdict == "abnormal":
            self.anomalies.append(window)
        elif self.unnormalised is not None:
            self.trainer.confirmed_normal.add(window, 0)
            self._wait_for_normalisation(window, None)
        else:
            self.trainer.confirm_normal(window)
        if item.verdict == "normal":
            self.called_normal.add(item.device_id)
        return item.verdict == "normal"

    def _anomaly_ranking(self) -> tuple[dict, str | None]:
        """How the candidate and the version in service rank the labeled anomalies above the held-out unlabeled
        windows (PR-AUC, i.e. average precision, and ROC-AUC), as version metrics, and why the candidate is
        refused (None: it is not): with at least ``MIN_LABELED_ANOMALIES``, when its PR-AUC is more than
        ``ANOMALY_AUC_MARGIN`` below serving's."""
        if (self.ssl_gate is None or not self.spec.has("anomaly") or len(self.anomalies) < MIN_LABELED_ANOMALIES
                or len(self.ssl_gate.windows) < self.ssl_gate.min_samples):
            return {}, None
        abnormal = np.stack(list(self.anomalies))
        held = np.stack([w for w, _ in self.ssl_gate.windows])
        metrics = {"labeled_anomalies": float(len(abnormal)), **_ranking(self.trainer.net, abnormal, held)}
        if self.serving is None:
            return metrics, None
        metrics.update({f"serving_{k}": v for k, v in _ranking(self.serving, abnormal, held).items()})
        if metrics["anomaly_pr_auc"] < metrics["serving_anomaly_pr_auc"] - ANOMALY_AUC_MARGIN:
            return metrics, (f"it ranks {len(abnormal)} labeled anomalies worse (PR-AUC "
                             f"{metrics['anomaly_pr_auc']:.3f} vs serving {metrics['serving_anomaly_pr_auc']:.3f})")
        return metrics, None

    def learn_window(self, item: WindowSample) -> Candidate | None:
        """Learn one unlabeled window for the self-supervised heads (one in ``holdout_every``, by a hash of
        its device and end, is held out for their gate instead). A model that does not classify proposes
        a candidate every ``gate_every`` windows, when its error on the held-out windows is lower than the
        version in service's (a first version's: than the trivial model's) on clearly more of them, or, once
        labelers have called windows normal since that version, when it is not clearly higher on more."""
        if self.ssl_gate is None:
            return None
        window = np.asarray(item.values, np.float32)
        future = np.asarray(item.future, np.float32) if item.future is not None and self.spec.has("forecast") else None
        self.unlabeled_seen += 1
        self.stream_clock = max(self.stream_clock, int(item.window_end))
        if item.device_id not in self.called_normal and self._looks_abnormal(window):
            self.unlabeled_set_aside += 1
            return None
        if zlib.crc32(f"{item.device_id}:{item.window_end}".encode()) % self.config.holdout_every == 0:
            self.ssl_gate.hold_out(window, future)
        elif self.unnormalised is not None:
            self._wait_for_normalisation(window, None, future)
        else:
            self.trainer.learn_unlabeled(window, future)
        return self._check_self_supervised(self.stream_clock)

    def _check_self_supervised(self, at: int) -> Candidate | None:
        """Count one window learned by a model that does not classify (unlabeled, or called normal by a
        labeler); every ``gate_every`` of them, judge the candidate on the held-out unlabeled windows."""
        if self.spec.has("classify") or self.unnormalised is not None:
            return None  # a classifier's versions come from its labels (the check above keeps these heads)
        self.since_ssl_gate += 1
        if self.due_rollback is not None or self.shadow is not None or self.since_ssl_gate < self.config.gate_every:
            return None
        self.since_ssl_gate = 0
        decision = self.ssl_gate.judge(self.trainer.net, self.serving)
        if not decision.accept and self.called_normal and self.serving is not None \
                and decision.samples >= self.ssl_gate.min_samples and not decision.clearly_worse(self.ssl_gate.z):
            # answers the version in service lacks: a candidate that learned them serves when it is not worse
            decision = replace(decision, accept=True, reason=(
                f"accepted: it learned windows labelers called normal on {len(self.called_normal)} device(s), "
                f"and is not clearly worse on the held-out windows ({decision.reason.removeprefix('refused: ')})"))
        return self._propose(decision, at) if decision.accept else None

    def _looks_abnormal(self, window: np.ndarray) -> bool:
        """Whether the version in service scores ``window`` at least ``unlabeled_max_score`` (never on a cold
        start, nor for a model without an anomaly head or whose score was never fitted). The caller skips
        devices in ``called_normal``: once a labeler has called one of a device's flagged windows normal, its
        windows are learned until the next version, fitted with that answer, serves and judges them."""
        limit = self.config.unlabeled_max_score
        net = self.serving
        if not limit or net is None or not self.spec.has("anomaly") or not net.anomaly_score_fitted:
            return False
        with torch.no_grad():
            return float(net.anomaly_score(torch.from_numpy(window[None]))[0]) >= limit

    def _self_supervised_worse(self) -> str | None:
        """Why a candidate's self-supervised heads are clearly worse than the version in service's (None:
        they are not, or there are too few held-out unlabeled windows to tell)."""
        if self.ssl_gate is None or self.serving is None or len(self.ssl_gate.windows) < self.ssl_gate.min_samples:
            return None
        decision = self.ssl_gate.judge(self.trainer.net, self.serving)
        return decision.reason if decision.clearly_worse(self.ssl_gate.z) else None

    def add_class(self, name: str) -> None:
        """Grow the learner's output layer by ``name``; the next version published has it (the version in
        service cannot predict it, so every held-out window of it counts against serving at the gate)."""
        self.trainer.add_classes([name])
        self.spec = self.trainer.net.spec
        self.index = {c: i for i, c in enumerate(self.spec.classes)}
        self.new_classes.append(name)
        log.info("learning a new class %r (%d classes now)", name, self.spec.n_classes)

    def _held_out(self, item: LabeledWindow) -> bool:
        """Whether a labeled window goes to the gate's held-out set (never trained on): one in
        ``holdout_every`` by a hash of its review id; with ``holdout = "audit"`` only audit windows are
        held out (one in ``holdout_every`` of them), so the gate judges on a uniform sample of the stream."""
        if self.config.holdout == "audit" and item.reason != "audit":
            return False
        return zlib.crc32(item.review_id.encode()) % self.config.holdout_every == 0

    def _deploy_now(self, decision: GateDecision, answered_at: int) -> bool:
        """Periodic deployment: a candidate the gate accepted is published at once when it is clearly
        better (``publish_now_z``), else once ``publish_interval_s`` passed since the last version (by
        the answers' time, so a restored loop decides the same)."""
        interval_ms = self.config.publish_interval_s * 1000
        last = self.last_published_at
        if not interval_ms or last is None or self.serving is None or answered_at - last >= interval_ms:
            return True
        if decision.clearly_better(self.config.publish_now_z):
            return True
        self.deferred += 1
        return False

    def _train(self, values: np.ndarray, label: int) -> None:
        if self.unnormalised is None:
            self.trainer.learn_one(values, label)
            return
        self._wait_for_normalisation(np.asarray(values, np.float32), label)

    def _wait_for_normalisation(self, window: np.ndarray, label: int | None, future: np.ndarray | None = None) -> None:
        """Cold start: the first ``COLD_START_NORMALISATION`` training windows, labeled or not, fit the fresh
        network's input normalisation; then they are learned, in the order they came."""
        self.unnormalised.append((window, label, future))
        if len(self.unnormalised) < COLD_START_NORMALISATION:
            return
        self.trainer.net.set_normalisation(np.stack([entry[0] for entry in self.unnormalised]))
        waiting, self.unnormalised = self.unnormalised, None
        for window, known, after in waiting:
            if known is None:
                self.trainer.learn_unlabeled(window, after)
            else:
                self.trainer.learn_one(window, known)

    def take_drifts(self) -> list[str]:
        """Drift signals detected since the last call (each to be published once)."""
        out, self.new_drifts = self.new_drifts, []
        return out

    def accepted(self, candidate: Candidate, version: int) -> None:
        self.adopt(version, candidate.net)

    def start_shadow(self, version: int, net: torch.nn.Module) -> None:
        """``version`` (weights ``net``) is now scored beside the version in service, not served."""
        self.shadow = (version, copy.deepcopy(net).eval())
        c = self.config
        self.trial = ShadowTrial(version, self.version, c.shadow_z, c.shadow_min_answers, c.shadow_answers)
        self.due_verdict = None

    def end_shadow(self) -> None:
        """The shadow phase is over (the version was promoted, withdrawn or passed by)."""
        self.shadow, self.trial, self.due_verdict = None, None, None
        self.since_gate = 0

    def take_shadow_verdict(self) -> ShadowVerdict | None:
        """The end of the shadow phase the answers call for (to be announced once), if any."""
        out, self.due_verdict = self.due_verdict, None
        return out

    def adopt(self, version: int, net: torch.nn.Module) -> None:
        """``version`` (weights ``net``) now serves; the one it replaces is kept as its rollback target."""
        self.parent_net, parent = self.serving, (self.version if self.serving is not None else None)
        self.serving = copy.deepcopy(net).eval()
        self.version = version
        self.called_normal = set()  # the new version was fitted with those answers: it judges their devices now
        self.watch.start(version, parent)
        if self.shadow is not None:
            self.end_shadow()
        if self.config.distill_strength > 0:
            self.trainer.set_teacher(self.serving)

    def __setstate__(self, state: dict) -> None:
        """A loop kept in keyed state before rollbacks and periodic deployment existed loads with them off
        until its next version."""
        self.__dict__.update(state)
        if "watch" not in state:
            self.parent_net, self.due_rollback, self.last_published_at, self.deferred = None, None, None, 0
            self.watch = RollbackWatch(self.config.rollback_z, self.config.rollback_min_audits)
        if "new_classes" not in state:
            self.new_classes = []
        if "shadow" not in state:
            self.shadow, self.trial, self.due_verdict = None, None, None
        if "ssl_gate" not in state:
            self.ssl_gate, self.unlabeled_seen, self.since_ssl_gate = None, 0, 0
        if "stream_clock" not in state:
            self.stream_clock = 0
        self.__dict__.setdefault("unlabeled_set_aside", 0)
        self.__dict__.setdefault("refused", 0)
        self.__dict__.setdefault("called_normal", set())
        if "anomalies" not in state:
            self.anomalies, self.verdicts = deque(maxlen=500), {"normal": 0, "abnormal": 0}
        if self.unnormalised and len(self.unnormalised[0]) == 2:  # (window, label) from before unlabeled windows
            self.unnormalised = [(w, label, None) for w, label in self.unnormalised]

    def take_rollback(self) -> Rollback | None:
        """A rollback the live audit answers call for (to be announced once), if any."""
        out, self.due_rollback = self.due_rollback, None
        return out

    def rolled_back(self, version: int, net: torch.nn.Module) -> None:
        """``version`` (weights ``net``) serves again: it is the gate's reference and the learner
        starts over from it (keeping its replay reservoir); there is no version to go back to from it."""
        self.serving = copy.deepcopy(net).eval()
        self.version = version
        self.parent_net = None
        self.watch.start(version, None)
        self.end_shadow()  # a candidate judged against the version rolled away from is judged no more
        state, older = self.trainer.net.state_dict(), net.state_dict()
        for key, value in older.items():  # a class learned since that version keeps its learned output row
            state[key] = value if value.shape == state[key].shape else torch.cat([value, state[key][len(value):]])
        self.trainer.net.load_state_dict(state)
        if self.trainer.lda is not None:  # the statistics learned so far keep setting the head
            self.trainer.set_head()
        if self.config.distill_strength > 0:
            self.trainer.set_teacher(self.serving)
        self.since_gate = 0

    @property
    def prequential_accuracy(self) -> float:
        return self.correct / self.labeled if self.labeled else float("nan")


def _ranking(net: torch.nn.Module, abnormal: np.ndarray, normal: np.ndarray) -> dict[str, float]:
    """How ``net``'s anomaly score ranks labeled anomalies above normal windows: PR-AUC and ROC-AUC."""
    with torch.inference_mode():
        a = net.eval().anomaly_score(torch.as_tensor(abnormal)).numpy()
        n = net.anomaly_score(torch.as_tensor(normal)).numpy()
    return {"anomaly_pr_auc": average_precision(a, n), "anomaly_roc_auc": roc_auc(a, n)}


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The chance a positive scores above a negative (ties count half).

    >>> roc_auc(np.array([3.0, 2.0]), np.array([1.0, 2.0]))
    0.875
    """
    return float((positive[:, None] > negative[None, :]).mean() + 0.5 * (positive[:, None] == negative[None, :]).mean())


def average_precision(positive: np.ndarray, negative: np.ndarray) -> float:
    """The area under the precision-recall curve as a sum over score thresholds (tied scores form one
    threshold): each threshold's precision weighted by the recall it adds, as scikit-learn computes it.

    >>> average_precision(np.array([3.0, 1.0]), np.array([2.0, 0.0]))
    0.8333333333333333
    >>> average_precision(np.array([5.0]), np.array([5.0, 5.0]))
    0.3333333333333333
    """
    scores = np.concatenate([positive, negative])
    hits = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last index of each distinct score
    tp = np.cumsum(hits)[last]
    precision, recall = tp / (last + 1), tp / max(len(positive), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def loop_from_registry(registry: ModelRegistry, model_name: str, config: LearningSettings,
                       declared_spec: dict | None = None) -> LearningLoop:
    """A fresh loop that starts from the registry's newest version of ``model_name``; with no version
    and a ``declared_spec`` (the configuration's ``[models.<name>]``), a cold start."""
    if declared_spec is not None and registry.latest_version(model_name) is None:
        return LearningLoop(None, ModelSpec.from_dict(declared_spec), 0, config)
    loaded = registry.load(model_name, registry.latest_servable(model_name))  # not a withdrawn or shadow version
    spec = ModelSpec.from_dict(loaded.metadata.spec)
    loop = LearningLoop(load_network(spec, loaded.weights_bytes), spec, loaded.metadata.version, config)
    with_shift(loop.serving, decision_shift(loaded.metadata.metrics, spec.n_classes))
    if loop.trainer.lda is not None:
        _start_lda(loop, registry, model_name)
    parent = loaded.metadata.parent_version
    if parent:
        try:
            older = registry.load(model_name, parent)  # its own spec: a class may have been added since
            older_spec = ModelSpec.from_dict(older.metadata.spec)
            loop.parent_net = with_shift(load_network(older_spec, older.weights_bytes).eval(),
                                         decision_shift(older.metadata.metrics, older_spec.n_classes))
            loop.watch.start(loop.version, parent)
        except ArtifactError as exc:
            log.warning("%s v%d: its parent v%d cannot be loaded, so it cannot be rolled back to: %s",
                        model_name, loop.version, parent, exc)
    return loop


def _start_lda(loop: LearningLoop, registry: ModelRegistry, model_name: str) -> None:
    """The LDA head starts from the statistics stored with the version (of its encoder's features on
    the data it was trained or learned on); a version without them starts it empty, and the gate keeps
    the version in service until the head has learned enough to beat it."""
    try:
        stored = registry.extra_artifact(model_name, loop.version, LDA_FILE)
    except ArtifactError as exc:
        log.warning("%s v%d: LDA statistics unusable, the LDA head starts empty: %s", model_name, loop.version, exc)
        return
    if stored is None:
        log.warning("%s v%d has no LDA statistics: the LDA head starts empty", model_name, loop.version)
        return
    lda = StreamingLDA.from_bytes(stored, loop.config.lda_shrinkage, loop.config.lda_decay)
    if lda.means.shape != loop.trainer.lda.means.shape:
        log.warning("%s v%d: LDA statistics of shape %s do not fit the model: the LDA head starts empty",
                    model_name, loop.version, lda.means.shape)
        return
    loop.trainer.lda = lda
    loop.trainer.set_head()


@dataclass
class Learned:
    """What one labeled window led to: records to publish, and the version accepted or rolled back to
    (with its weights)."""

    outgoing: list[Outgoing]
    accepted: tuple[int, bytes, tuple | None] | None = None  # (version, weights, shift_of its network)
    rolled_back: tuple[int, bytes, tuple | None] | None = None
    shadowing: tuple[int, bytes, tuple | None] | None = None  # a version that began its shadow phase
    shadow_ended: int | None = None  # a version whose shadow phase ended without serving


class VersionPublisher:
    """Feeds labeled windows to a :class:`LearningLoop`; publishes each candidate that passes the gate
    as the registry's next version with its metrics, and announces it and every drift signal.

    Version numbers come from the registry, so restarts and other publishers never reuse one.
    """

    def __init__(self, registry: ModelRegistry, model_name: str, topics: Topics,
                 serving: ServingSettings = ServingSettings(), signing_key: str = "",
                 int8_min_agreement: float | None = None, keep_withdrawn: int = 10) -> None:
        self.registry, self.model_name, self.topics, self.serving = registry, model_name, topics, serving
        self.signing_key = signing_key
        self.int8_min_agreement = int8_min_agreement  # None: no INT8 graph with each version
        self.keep_withdrawn = keep_withdrawn  # withdrawn versions kept in the registry (older ones are deleted)
        self.published = 0
        self.drift_events = 0
        self.rollbacks = 0
        self.promoted = 0  # versions that served after their shadow phase
        self.withdrawn = 0  # versions withdrawn in their shadow phase

    def _roll_back(self, loop: LearningLoop, rollback: Rollback) -> tuple[list[Outgoing], tuple[int, bytes] | None]:
        """Announce ``rollback.to_version`` again and make it the loop's reference."""
        try:
            loaded = self.registry.load(self.model_name, rollback.to_version)
            spec = ModelSpec.from_dict(loaded.metadata.spec)
            net = with_shift(load_network(spec, loaded.weights_bytes),
                             decision_shift(loaded.metadata.metrics, spec.n_classes))
            snapshot = announcement(self.registry, self.model_name, rollback.to_version, self.signing_key)
        except ArtifactError as exc:
            log.error("%s: rollback to v%d impossible, v%d keeps serving: %s", self.model_name, rollback.to_version,
                      rollback.version, exc)
            return [], None
        loop.rolled_back(rollback.to_version, net)
        self.registry.set_stage(self.model_name, rollback.version, "rolled-back")  # a fresh start must not serve it
        self.rollbacks += 1
        log.warning("%s: rolled back to v%d: %s", self.model_name, rollback.to_version, rollback.reason)
        return ([Outgoing(self.topics.model_snapshots, self.model_name, snapshot.encode())],
                (rollback.to_version, loaded.weights_bytes, shift_of(net)))

    def learn(self, loop: LearningLoop, item: LabeledWindow | WindowSample, now_ms: int) -> Learned:
        candidate = loop.learn(item)
        out = []
        for signal in loop.take_drifts():
            event = DriftEvent(self.model_name, signal, now_ms, loop.version, self.serving.drift_budget_per_minute,
                               self.serving.drift_boost_seconds, loop.drift.error_rate)
            log.info("drift (%s) detected after %d labeled windows", signal, loop.labeled)
            self.drift_events += 1
            out.append(Outgoing(self.topics.drift_events, self.model_name, event.encode()))
        rollback = loop.take_rollback()
        if rollback is not None:
            shadowed = loop.shadow[0] if loop.shadow is not None else None
            announced, rolled_back = self._roll_back(loop, rollback)
            if shadowed is not None and rolled_back is not None:
                announced.append(self._withdraw(shadowed))
                return Learned(out + announced, rolled_back=rolled_back, shadow_ended=shadowed)
            return Learned(out + announced, rolled_back=rolled_back)
        verdict = loop.take_shadow_verdict()
        if verdict is not None:
            return self._end_shadow(loop, verdict, out)
        if candidate is None:
            return Learned(out)
        d = candidate.decision
        if isinstance(d, SelfSupervisedDecision):  # a model that does not classify
            metrics = {"holdout_error": d.candidate_error, "serving_holdout_error": d.serving_error,
                       "holdout_windows": float(d.samples), "unlabeled_windows": float(loop.unlabeled_seen),
                       "unlabeled_windows_set_aside": float(loop.unlabeled_set_aside)}
        else:
            metrics = {"holdout_accuracy": d.candidate_accuracy, "serving_holdout_accuracy": d.serving_accuracy,
                       "holdout_windows": float(d.samples), "prequential_accuracy": loop.prequential_accuracy,
                       "labeled_windows": float(loop.labeled), "drift_events": float(loop.drift_events),
                       "unlabeled_windows": float(loop.unlabeled_seen),
                       "trigger_label_at_ms": float(candidate.trigger_answered_at)}
        held = list(loop.gate.windows)
        calibration = (np.stack([w for w, _ in held]), np.asarray([label for _, label in held])) if held else None
        metrics.update(candidate.metrics)
        # the anomaly score is refitted on windows taken as normal: the unlabeled ones it remembers and those people
        # confirmed, else the labeled ones
        remembered = loop.trainer.unlabeled_memory.all()[0]
        if len(remembered) < 32:
            remembered = loop.trainer.reservoir.all()[0]
        confirmed = loop.trainer.confirmed_normal.all()[0] if len(loop.trainer.confirmed_normal) else None
        meta = publish_version(self.registry, self.model_name, candidate.net, loop.spec, metrics,
                               parent_version=loop.version or None, data_seen=loop.labeled,
                               note=f"online{' (cold start)' if not loop.version else ''}: {d.reason}",
                               calibration=calibration, int8_min_agreement=self.int8_min_agreement,
                               lda=candidate.lda, normal_windows=remembered if len(remembered) >= 32 else None,
                               confirmed_normal=confirmed,
                               calibration_mode=loop.config.calibration)
        self.published += 1
        with_shift(candidate.net, decision_shift(meta.metrics, loop.spec.n_classes))  # judged as it serves
        weights = weights_bytes(candidate.net)
        if loop.config.shadow_answers > 0 and loop.serving is not None:
            self.registry.set_stage(self.model_name, meta.version, "shadow")  # not for serving until promoted
            loop.start_shadow(meta.version, candidate.net)
            log.info("published %s v%d for its shadow phase beside v%d: %s", self.model_name, meta.version,
                     loop.version, d.reason)
            out.append(self._announce(meta.version, "shadow"))
            return Learned(out, shadowing=(meta.version, weights, shift_of(candidate.net)))
        loop.accepted(candidate, meta.version)
        if isinstance(d, SelfSupervisedDecision):  # completed by a window, whose time is the device's clock
            log.info("published %s v%d: %s", self.model_name, meta.version, d.reason)
        else:
            log.info("published %s v%d %d ms after the answer that completed it: %s", self.model_name, meta.version,
                     now_ms - candidate.trigger_answered_at, d.reason)
        out.append(self._announce(meta.version))
        return Learned(out, (meta.version, weights, shift_of(candidate.net)))

    def _announce(self, version: int, stage: str | None = None) -> Outgoing:
        snapshot = announcement(self.registry, self.model_name, version, self.signing_key, stage)
        return Outgoing(self.topics.model_snapshots, self.model_name, snapshot.encode())

    def _end_shadow(self, loop: LearningLoop, verdict: ShadowVerdict, out: list[Outgoing]) -> Learned:
        """Promote the version in its shadow phase (announce it to serve) or withdraw it."""
        version, net = loop.shadow
        if verdict.promote:
            self.registry.set_stage(self.model_name, version, None)
            loop.adopt(version, net)
            self.promoted += 1
            log.info("%s v%d promoted after its shadow phase: %s", self.model_name, version, verdict.reason)
            return Learned(out + [self._announce(version)], accepted=(version, weights_bytes(net), shift_of(net)))
        loop.end_shadow()
        announced = self._withdraw(version)
        log.warning("%s v%d withdrawn in its shadow phase: %s", self.model_name, version, verdict.reason)
        return Learned(out + [announced], shadow_ended=version)

    def _withdraw(self, version: int) -> Outgoing:
        """Announce the end of ``version``'s shadow phase, mark it withdrawn, and delete the oldest
        withdrawn versions beyond ``keep_withdrawn`` (never a version that served)."""
        announced = self._announce(version, "withdrawn")
        self.registry.set_stage(self.model_name, version, "withdrawn")
        self.withdrawn += 1
        deleted = self.registry.prune_withdrawn(self.model_name, self.keep_withdrawn)
        if deleted:
            log.info("%s: deleted withdrawn versions %s (registry.keep_withdrawn = %d)", self.model_name, deleted,
                     self.keep_withdrawn)
        return announced
