"""Full retrain from the labeled archive: every answered review request on Kafka, joined, used to
train a candidate from the newest version's weights; the same validation gate decides, and an
accepted candidate is written to the registry and announced like an online one."""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import numpy as np

from infra.kafka_tools import produce, read_quiet
from model.registry import ModelRegistry
from model.signing import announcement
from model.spec import ModelSpec
from model.train import encode_labels, fit, lda_of, load_network, predict_proba, publish_version
from operators.gate import GateDecision, ValidationGate
from operators.label_join import LabeledWindow, LabelJoiner
from schemas import Label, ReviewRequest, SchemaError, Topics


@dataclass
class RetrainResult:
    labeled: int
    skipped: int
    decision: GateDecision
    version: int | None


def labeled_archive(bootstrap: str, classes: list[str], topics: Topics,
                    shape: tuple[int, int] | None = None) -> tuple[list[LabeledWindow], int]:
    """Join every request on ``review-requests`` with its answers on ``labels`` (read from the start);
    requests whose window is not ``shape`` are left out like malformed ones."""
    joiner = LabelJoiner(classes, ttl_ms=2**62, shape=shape)
    states: dict[str, object] = {}
    done: list[LabeledWindow] = []
    skipped = 0
    records = read_quiet(bootstrap, [topics.review_requests, topics.labels], quiet_s=3, timeout_s=600)
    for record in records:
        try:
            if record.topic == topics.review_requests:
                message = ReviewRequest.decode(record.value)
                handler = joiner.on_request
            else:
                message = Label.decode(record.value)
                handler = joiner.on_label
        except SchemaError:
            skipped += 1  # the jobs dead-letter malformed records; the archive just leaves them out
            continue
        state = states.setdefault(message.review_id, joiner.new_state())
        try:
            items, rejected = handler(state, message, 0)
        except SchemaError:
            skipped += 1
            continue
        done += items
        skipped += len(rejected)
    return done, skipped


def retrain(bootstrap: str, topics: Topics, registry_root: str, model_name: str, epochs: int = 10, lr: float = 5e-4,
            margin: float = 0.0, holdout_every: int = 4, announce: bool = True,
            signing_key: str = "", int8_min_agreement: float | None = None) -> RetrainResult:
    registry = ModelRegistry(registry_root)
    serving = registry.load(model_name, registry.latest_servable(model_name))  # a withdrawn version never served
    spec = ModelSpec.from_dict(serving.metadata.spec)
    items, skipped = labeled_archive(bootstrap, list(spec.classes), topics, (spec.window, spec.n_channels))
    if not items:
        raise SystemExit("the labeled archive is empty: no answered review requests on Kafka")
    held = np.asarray([zlib.crc32(i.review_id.encode()) % holdout_every == 0 for i in items])
    X = np.stack([i.values for i in items]).astype(np.float32)
    y = encode_labels([i.label for i in items], spec.classes)
    reference = load_network(spec, serving.weights_bytes)
    candidate = copy.deepcopy(reference)
    if (~held).any():
        fit(candidate, X[~held], y[~held], epochs=epochs, lr=lr, batch_size=32)
    gate = ValidationGate(margin, min_samples=1, holdout=int(held.sum()) or 1)
    for window, label in zip(X[held], y[held]):
        gate.hold_out(window, int(label))
    decision = gate.judge(lambda batch: predict_proba(candidate, batch), lambda batch: predict_proba(reference, batch))
    version = None
    if decision.accept:
        meta = publish_version(registry, model_name, candidate, spec,
                               {"holdout_accuracy": decision.candidate_accuracy,
                                "serving_holdout_accuracy": decision.serving_accuracy,
                                "holdout_windows": float(decision.samples), "labeled_windows": float(len(items))},
                               parent_version=serving.metadata.version, data_seen=len(items),
                               note=f"full retrain from the labeled archive: {decision.reason}",
                               calibration=(X[held], y[held]), int8_min_agreement=int8_min_agreement,
                               lda=lda_of(candidate, X[~held], y[~held]) if (~held).any() else None,
                               normal_windows=X[~held] if (~held).sum() >= 32 else None)
        version = meta.version
        if announce:
            snapshot = announcement(registry, model_name, version, signing_key)
            produce(bootstrap, topics.model_snapshots, [(model_name.encode(), snapshot.encode())])
    return RetrainResult(len(items), skipped, decision, version)


def describe(result: RetrainResult) -> str:
    made = f"published v{result.version}" if result.version else "no new version"
    return (f"{result.labeled} labeled windows ({result.skipped} answers or records not usable): "
            f"{result.decision.reason} -> {made}")

