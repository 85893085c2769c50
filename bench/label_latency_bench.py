"""Label → serving latency of the closed loop, on the real jobs: embedded broker, serving and learning
jobs on Flink MiniClusters, replayed BasicMotions readings with a gyroscope calibration bias,
simulated labelers answering review requests.

For every version the learning job publishes: seconds from the answer that completed it to its
publication (learner side) and to the first prediction it made (serving side). The learning job runs
once in process mode (the baseline: its former default) and once in thread mode, in the same run.
The first ``--warmup`` seconds, while the learner works through the labels given during its start, are
reported apart from the steady state.

Run: ``python bench/label_latency_bench.py [--duration 90]``; writes bench/results/label_latency.{json,png}.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, line_plot, print_table, save  # noqa: E402
from infra.broker import EmbeddedBroker, ensure_topics, free_port  # noqa: E402
from infra.kafka_tools import TopicTail  # noqa: E402
from model.registry import ModelRegistry  # noqa: E402
from operators.replay import DriftPlan  # noqa: E402
from schemas import Topics  # noqa: E402
from control.flink_rest import FlinkRest  # noqa: E402
from control.launcher import learning_job, serving_job  # noqa: E402
from control.replayer import replay  # noqa: E402
from labeling.simulated import run_simulated_labelers  # noqa: E402

NAME = "basic-motions"
TOPICS = Topics()


def run_loop(mode: str, source_registry: str, duration_s: float, rate: float, work: Path) -> list[dict]:
    """One closed-loop run; per published version: times relative to the replay start."""
    root = work / f"registry-{mode}"
    shutil.copytree(Path(source_registry) / NAME / "v000001", root / NAME / "v000001")
    classes = list(ModelRegistry(root).latest_metadata(NAME).spec["classes"])
    with EmbeddedBroker(log_path=work / f"broker-{mode}.log") as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        port = free_port()
        learning = learning_job(broker.bootstrap, work / f"learning-{mode}.log", registry=str(root),
                                state_dir=str(work / f"ck-l-{mode}"), gate_every=48, execution_mode=mode,
                                rest_port=port)
        serving = serving_job(broker.bootstrap, work / f"serving-{mode}.log", registry=str(root),
                              state_dir=str(work / f"ck-s-{mode}"), confidence_threshold=0.9, audit_rate=0.3,
                              review_budget_per_minute=100_000)
        stop = threading.Event()
        first_emitted: dict[int, int] = {}
        with learning, serving:
            FlinkRest(f"localhost:{port}", timeout_s=2).wait_all_tasks_running(learning.alive)
            tail = TopicTail(broker.bootstrap, [TOPICS.predictions])
            time.sleep(5)  # the serving job's start
            started_ms = int(time.time() * 1000)
            threading.Thread(target=replay, daemon=True, kwargs=dict(
                bootstrap=broker.bootstrap, topic=TOPICS.readings, rate=rate, n_devices=8, stop=stop,
                drift=DriftPlan(after=0, offset={3: 4.0, 4: 4.0, 5: 4.0}))).start()
            threading.Thread(target=run_simulated_labelers, daemon=True, kwargs=dict(
                bootstrap=broker.bootstrap, topics=TOPICS, classes=classes, delay_ms=200, stop=stop)).start()
            deadline = time.monotonic() + duration_s
            try:
                while time.monotonic() < deadline:
                    for r in tail.poll(200):
                        p = orjson.loads(r.value)
                        first_emitted.setdefault(p["model_version"], p["emitted_at"])
                    if not (learning.alive() and serving.alive()):
                        raise RuntimeError("a job died:\n" + learning.log_tail(20) + serving.log_tail(20))
            finally:
                stop.set()
                tail.close()
    registry = ModelRegistry(root)
    rows = []
    for version in registry.versions(NAME)[1:]:
        meta = registry.metadata(NAME, version)
        trigger = meta.metrics["trigger_label_at_ms"]
        served = first_emitted.get(version)
        rows.append({"version": version, "answered_s": (trigger - started_ms) / 1000,
                     "published_s": (meta.created_at - trigger) / 1000,
                     "serving_s": None if served is None else (served - trigger) / 1000})
    return rows


def summary(rows: list[dict], warmup_s: float) -> dict:
    def stats(values: list[float]) -> list:
        if not values:
            return [0, "-", "-", "-"]
        ordered = sorted(values)
        return [len(ordered), round(statistics.median(ordered), 2),
                round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2), round(ordered[-1], 2)]

    served = [r for r in rows if r["serving_s"] is not None]
    return {"warmup": stats([r["serving_s"] for r in served if r["answered_s"] < warmup_s]),
            "steady": stats([r["serving_s"] for r in served if r["answered_s"] >= warmup_s]),
            "steady_published": stats([r["published_s"] for r in rows if r["answered_s"] >= warmup_s])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of replay per mode")
    parser.add_argument("--rate", type=float, default=300.0, help="readings per second")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds reported apart as start-up")
    parser.add_argument("--registry", default="var/registry", help="where model version 1 is")
    parser.add_argument("--modes", default="process,thread")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="label-latency-"))
    results = {}
    for mode in args.modes.split(","):
        rows = run_loop(mode, args.registry, args.duration, args.rate, work)
        results[mode] = {"versions": rows, **summary(rows, args.warmup)}
    table = []
    for mode, r in results.items():
        table.append([f"learning job, {mode} mode", "first %.0f s" % args.warmup, *r["warmup"]])
        table.append([f"learning job, {mode} mode", "after", *r["steady"]])
        table.append(["  of which label -> published", "after", *r["steady_published"]])
    print_table("label -> serving seconds (answer that completed a version -> its first prediction)",
                ["learner", "answers given", "versions", "median", "p90", "max"], table)
    if "process" in results and "thread" in results and results["thread"]["steady"][0] and results["process"]["steady"][0]:
        ratio = results["process"]["steady"][1] / max(results["thread"]["steady"][1], 1e-9)
        print(f"steady-state median: thread mode {ratio:.1f}x faster than process mode (same run)")
    save("label_latency", {"args": vars(args), "results": results})
    line_plot(RESULTS / "label_latency.png",
              [(f"{mode} mode", [v["answered_s"] for v in r["versions"] if v["serving_s"] is not None],
                [v["serving_s"] for v in r["versions"] if v["serving_s"] is not None], {"marker": "o"})
               for mode, r in results.items()],
              "seconds into the replay (answer time)", "label -> serving (s)",
              "Label -> serving per published version")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
