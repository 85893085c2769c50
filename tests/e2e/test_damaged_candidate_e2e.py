"""A candidate damaged on purpose is refused by the gate (real broker, real Flink MiniCluster).

The learning job starts from the trained v1. Every answer it trains on names the wrong class (the next
one in the model's list: the labels shuffled by a fixed rotation), while the answers its gate holds out
(one in four, by the hash of the review id, ``LearningLoop._held_out``) name the right one. The learner's
network is therefore trained to be wrong, and the gate must keep it from serving: no version is
published or announced, every check is logged as a refusal naming the candidate's held-out accuracy far
below v1's, and the job keeps running. (With ``gate_margin = 1.0``, which accepts any candidate, this
test fails: versions are published.)"""

from __future__ import annotations

import re
import time
import zlib

import numpy as np
import pytest

from control.launcher import learning_job
from infra.broker import EmbeddedBroker, ensure_topics
from infra.kafka_tools import produce, read_quiet
from model.datasets import load_basic_motions, sliding_windows
from model.registry import ModelRegistry
from schemas import Topics
from settings import LearningSettings
from tests.e2e.test_learning_restart_e2e import audit_answered

pytestmark = pytest.mark.e2e
TOPICS = Topics()
NAME = "basic-motions"
ANSWERS = 160
REFUSAL = re.compile(r"candidate refused by the gate: refused(?: early)?: candidate ([\d.]+) vs serving ([\d.]+) "
                     r".* on (\d+) held-out windows")


def held_out(review_id: str) -> bool:
    """The learning loop's default hold-out rule (``holdout = "hashed"``: one in ``holdout_every`` by the id's hash)."""
    return zlib.crc32(review_id.encode()) % LearningSettings().holdout_every == 0


def rotated_answers(classes: list[str]) -> tuple[list, list, int]:
    """Review requests for real windows (serving predicted the right class) and their answers: right for
    the held-out ones, the next class for the others. Also the number held out."""
    X, y = sliding_windows(load_basic_motions("test"), 32, 4)
    order = np.random.default_rng(0).permutation(len(X))[:ANSWERS]
    requests, labels, n_held = [], [], 0
    for i, k in enumerate(order):
        rid, true = f"device-d:{1_700_000_000_000 + i}", str(y[k])
        kept = held_out(rid)
        n_held += kept
        answer = true if kept else classes[(classes.index(true) + 1) % len(classes)]
        request, label = audit_answered(rid, X[k], true, answer)
        requests.append(request)
        labels.append(label)
    return requests, labels, n_held


def test_a_candidate_trained_on_shuffled_labels_is_refused_and_never_served(tmp_path, registry_copy):
    registry = ModelRegistry(registry_copy)
    classes = list(registry.latest_metadata(NAME).spec["classes"])
    requests, labels, n_held = rotated_answers(classes)
    assert 20 <= n_held <= ANSWERS // 2, n_held
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        # the answers' drift (serving "wrong" on three in four) must not empty the held-out set: the last check
        # then judges on nearly every held-out answer, which tells the test that the answers were learned
        job = learning_job(broker.bootstrap, tmp_path / "learning.log", registry=registry_copy,
                           state_dir=str(tmp_path / "ck"), gate_forgets_on_drift=False,
                           group_id="learn-damaged").start()
        with job:
            produce(broker.bootstrap, TOPICS.review_requests, requests)
            produce(broker.bootstrap, TOPICS.labels, labels)
            refusals: list[tuple[float, float, int]] = []
            deadline, quiet_since = time.monotonic() + 240, time.monotonic()
            while time.monotonic() < deadline:
                assert job.alive(), job.log_tail(40)
                time.sleep(1)
                said = job.log_tail(100_000, only="candidate refused by the gate")  # the MiniCluster's log
                found = [(float(a), float(b), int(n)) for a, b, n in REFUSAL.findall(said)]
                if found != refusals:
                    refusals, quiet_since = found, time.monotonic()
                elif refusals and refusals[-1][2] >= n_held - 7 and time.monotonic() - quiet_since > 5:
                    break  # the last check (every 8 answers) judged on nearly every held-out answer, and no more came
            assert refusals and refusals[-1][2] >= n_held - 7, (refusals, job.log_tail(60))
            snapshots = read_quiet(broker.bootstrap, [TOPICS.model_snapshots], quiet_s=3)
            assert job.alive(), job.log_tail(40)
    assert snapshots == [], "a version was announced"
    assert registry.versions(NAME) == [1], "the damaged candidate was published"
    candidate, serving, _ = refusals[-1]
    assert serving >= 0.9, refusals  # v1 on the right answers
    assert candidate <= serving - 0.3, refusals  # trained to name the next class
    assert len(refusals) >= (ANSWERS - 24) // 8 // 2, refusals  # checks every 8 answers, most of them judged
