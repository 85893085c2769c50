"""The anomaly score streamed through the real serving job (embedded Kafka-protocol broker, Flink
MiniCluster, the official Kafka connector, ONNX Runtime), on the annotated UCR event and on Daphnet with
injected faults, next to river's ``HalfSpaceTrees`` and aeon's ``KMeansAD`` on the same windows, in one run.

For each dataset a model (anomaly and, where the series has samples after each window, forecast heads) is
trained on the normal part exactly as ``bench/anomaly_bench.py`` trains it (seed 0), published to a fresh
registry, and declared in a configuration (window 64, stride 4). The test series is sent as one device's
readings; the serving job cuts the windows and scores them. Each sample gets the highest score of the
windows the job served that hold it; ROC-AUC and PR-AUC per sample are computed from the predictions
topic. The comparison detectors score the same windows (stride 4 from the first sample), and the same
network scores them in process, so the table also says how far the job's scores are from the in-process
ones (the exported graph in ONNX Runtime against PyTorch). A second pass puts the scores on the device's own
scale (``serving.anomaly_device_windows``, its first 128 windows as reference) and reports how many normal
and anomalous windows after that reference reach the threshold 3 on either scale.

What the loop adds, through the jobs (Daphnet): the test series goes through the serving and the learning
job together, every window passed on to learning, while a simulated labeler answers each anomaly question
from the injected truth; then the version the learning job published last and v1 each score the same series
with faults injected afresh, through the serving job.

Run: ``python bench/anomaly_jobs_bench.py [--no-loop]``; writes bench/results/anomaly_jobs.json. About 10
minutes (5 with ``--no-loop``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.anomaly_bench import (HORIZON, STRIDE, auc, datasets, half_space_trees, inject_faults,  # noqa: E402
                                 kmeans_ad, model_scores, per_sample, train_model, windows_of)
from bench.common import print_table, save  # noqa: E402
from model.self_supervised import windows_with_future  # noqa: E402
from model.spec import ModelSpec  # noqa: E402

T0 = 1_700_000_000_000
DEVICE_WINDOWS = 128  # serving.anomaly_device_windows of the second pass: the device's first 128 windows
LOOP_BATCH = 16  # learning.batch_size of the loop pass (as anomaly_bench's in-process loop)
LOOP_QUIET_S = 90  # the loop pass ends once no version was published for this long after the last answer...
LOOP_MAX_S = 600  # ... or this long after the stream was sent
NAMES = {"UCR InternalBleeding16": ("bleeding", 10.0), "Daphnet + injected faults": ("daphnet", 64.0)}


def trained(name: str, d: dict, epochs: int):
    """The model ``anomaly_bench`` trains for ``name`` (seed 0) and its spec."""
    window, train = d["window"], d["train"]
    channels = tuple(f"c{i}" for i in range(train.shape[1]))
    Ftr = None
    if "clean" in d:
        Xtr, Ftr = windows_with_future(train, window, HORIZON, 2)
    else:
        Xtr, _ = windows_of(train, window, 2)
    tasks = ("anomaly", "forecast") if Ftr is not None else ("anomaly",)
    spec = ModelSpec(window=window, channels=channels, classes=(), tasks=tasks, horizon=HORIZON if Ftr is not None else 0)
    return train_model(spec, Xtr, None, Ftr, 0, epochs), spec


def config_text(registry: Path, model: str, spec: ModelSpec, rate_hz: float, device_windows: int = 0,
                unlabeled_share: float = 0.0) -> str:
    lines = [f'[registry]\npath = "{registry}"\nmodel_name = "{model}"\n',
             f"[serving]\naudit_rate = 0.0\nunlabeled_share = {unlabeled_share}\nreview_budget_per_minute = 100000",
             f"anomaly_device_windows = {device_windows}\n", f"[learning]\nbatch_size = {LOOP_BATCH}\nseed = 0\n",
             f"[models.{model}]", f"channels = {orjson.dumps(list(spec.channels)).decode()}",
             f"sample_rate_hz = {rate_hz}", f"window = {spec.window}", f"stride = {STRIDE}",
             f"tasks = {orjson.dumps(list(spec.tasks)).decode()}"]
    if spec.horizon:
        lines.append(f"forecast_horizon = {spec.horizon}")
    return "\n".join(lines) + "\n"


def windows_in(test: np.ndarray, spec: ModelSpec) -> int:
    """How many windows the serving job cuts from ``test`` (its samples, one device) at ``STRIDE``."""
    return len(range(0, len(test) - spec.window + 1, STRIDE))


def readings_of(test: np.ndarray, rate_hz: float) -> tuple[list[tuple[bytes, bytes]], dict[int, int]]:
    """``test`` as one device's readings, and each reading's sample index by its timestamp."""
    ts = T0 + np.round(np.arange(len(test)) * 1000.0 / rate_hz).astype(np.int64)
    readings = [(b"sensor-1", orjson.dumps({"device_id": "sensor-1", "ts": int(t), "values": row.tolist()}))
                for t, row in zip(ts, test.astype(np.float64))]
    return readings, {int(t): i for i, t in enumerate(ts)}


def through_the_job(root: Path, model: str, spec: ModelSpec, test: np.ndarray, rate_hz: float,
                    device_windows: int = 0, registry: Path | None = None, name: str = ""
                    ) -> tuple[dict[int, float], float]:
    """Send ``test`` as one device's readings through the serving job (``device_windows``: its
    ``serving.anomaly_device_windows``; it serves the newest version in ``registry``, by default
    ``root/registry``); each served window's anomaly score by its first sample's index, and the seconds from
    the first reading sent to the last prediction read."""
    from control.launcher import serving_job
    from infra.broker import EmbeddedBroker, ensure_topics
    from infra.kafka_tools import produce, read_until
    from schemas import Topics

    topics = Topics()
    pass_dir = root / (name or f"device-windows-{device_windows}")  # each pass its own configuration, state, logs
    pass_dir.mkdir()
    config = pass_dir / "sensorloop.toml"
    config.write_text(config_text(registry or root / "registry", model, spec, rate_hz, device_windows))
    readings, index = readings_of(test, rate_hz)
    expected = windows_in(test, spec)
    with EmbeddedBroker(log_path=pass_dir / "broker.log") as broker:
        ensure_topics(broker.bootstrap, topics)
        job = serving_job(broker.bootstrap, pass_dir / "serving.log", config=str(config), state_dir=str(pass_dir / "ck"),
                          log_dir=str(pass_dir))
        with job:
            started = time.perf_counter()
            produce(broker.bootstrap, topics.readings, readings)

            def done(records) -> bool:
                if not job.alive():
                    raise RuntimeError("the serving job died:\n" + job.log_tail(60))
                return len(records) >= expected
            records = read_until(broker.bootstrap, [topics.predictions], done, timeout_s=300)
            seconds = time.perf_counter() - started
    return scores_of(records, index, expected, model), seconds


def scores_of(records: list, index: dict[int, int], expected: int, model: str) -> dict[int, float]:
    """Each served window's anomaly score by its first sample's index (every window must have one)."""
    from schemas import Prediction

    scores = {}
    for r in records:
        p = Prediction.decode(r.value)
        scores[index[p.window_start]] = float(p.anomaly)
    if len(scores) != expected:
        raise RuntimeError(f"{model}: the job served {len(scores)} windows of {expected}")
    return scores


def the_loop_through_the_jobs(root: Path, model: str, spec: ModelSpec, test: np.ndarray, labels: np.ndarray,
                              rate_hz: float) -> dict:
    """Stream ``test`` through the serving and the learning job together, every window passed on to learning
    (``serving.unlabeled_share = 1``), while a simulated labeler answers each anomaly question from the
    injected truth (abnormal where the window holds a faulty sample, else normal). Ends once no new version
    came for ``LOOP_QUIET_S`` after the stream was served and answered; what it published, the answers and
    the newest version's metrics."""
    from control.launcher import learning_job, serving_job
    from infra.broker import EmbeddedBroker, ensure_topics
    from infra.kafka_tools import TopicTail, produce
    from schemas import Label, ModelSnapshot, ReviewRequest, Topics

    topics = Topics()
    pass_dir = root / "loop"
    pass_dir.mkdir()
    config = pass_dir / "sensorloop.toml"
    config.write_text(config_text(root / "loop-registry", model, spec, rate_hz, unlabeled_share=1.0))
    readings, index = readings_of(test, rate_hz)
    expected = windows_in(test, spec)
    options = dict(config=str(config), state_dir=str(pass_dir / "ck"), log_dir=str(pass_dir))
    answers = {"normal": 0, "abnormal": 0}
    snapshots: list[ModelSnapshot] = []
    with EmbeddedBroker(log_path=pass_dir / "broker.log") as broker:
        ensure_topics(broker.bootstrap, topics)
        serving = serving_job(broker.bootstrap, pass_dir / "serving.log", **options)
        learning = learning_job(broker.bootstrap, pass_dir / "learning.log", **options)
        with serving, learning:
            started = time.perf_counter()
            produce(broker.bootstrap, topics.readings, readings)
            tail = TopicTail(broker.bootstrap, [topics.predictions, topics.review_requests, topics.model_snapshots])
            served, last_news = 0, time.perf_counter()
            try:
                while time.perf_counter() - started < LOOP_MAX_S:
                    if not (serving.alive() and learning.alive()):
                        raise RuntimeError("a job died:\n" + serving.log_tail(30) + learning.log_tail(30))
                    out = []
                    for r in tail.poll(500):
                        if r.topic == topics.predictions:
                            served += 1
                        elif r.topic == topics.model_snapshots:
                            snapshots.append(ModelSnapshot.decode(r.value))
                            last_news = time.perf_counter()
                        elif (request := ReviewRequest.decode(r.value)).reason == "anomaly":
                            first = index[request.window_start]
                            verdict = "abnormal" if labels[first:first + spec.window].any() else "normal"
                            answers[verdict] += 1
                            label = Label(request.review_id, "", "truth", int(time.time() * 1000), model_name=model,
                                          verdict=verdict)
                            out.append((label.review_id.encode(), label.encode()))
                            last_news = time.perf_counter()
                    if out:
                        produce(broker.bootstrap, topics.labels, out)
                    if served >= expected and time.perf_counter() - last_news > LOOP_QUIET_S:
                        break
            finally:
                tail.close()
            seconds = time.perf_counter() - started
    newest = max(snapshots, key=lambda s: s.version) if snapshots else None
    return {"served": served, "expected": expected, "answers": answers, "seconds": seconds,
            "versions": sorted(s.version for s in snapshots),
            "newest": newest.version if newest else 1,
            "newest_metrics": newest.metrics if newest else {}}


def run(epochs: int, loop: bool = True) -> dict:
    results: dict = {"anomaly": {}, "job": {}, "threshold": {}, "loop": {}}
    for name, d in datasets(0).items():
        if name not in NAMES:
            continue
        model, rate = NAMES[name]
        net, spec = trained(name, d, epochs)
        test, labels, window = d["test"], d["labels"], d["window"]
        with tempfile.TemporaryDirectory(prefix=f"sensorloop-{model}-") as tmp:
            from model.registry import ModelRegistry
            from model.train import publish_version

            root = Path(tmp)
            publish_version(ModelRegistry(str(root / "registry")), model, net, spec, {})
            served, seconds = through_the_job(root, model, spec, test, rate)
            own_scale, _ = through_the_job(root, model, spec, test, rate, DEVICE_WINDOWS)
            if loop and "clean" in d:  # what the loop adds, through the jobs, judged on faults injected afresh
                publish_version(ModelRegistry(str(root / "loop-registry")), model, net, spec, {})
                results["loop"][name] = the_loop_through_the_jobs(root, model, spec, test, labels, rate)
                fresh, fresh_labels, _ = inject_faults(d["clean"], 4.0, rate, per_kind=len(d["faults"]) // 3, seed=100)
                fresh_starts = windows_of(fresh, window)[1]
                for row, registry in (("before (v1)", root / "registry"),
                                      (f"after the loop (v{results['loop'][name]['newest']})", root / "loop-registry")):
                    scores, _ = through_the_job(root, model, spec, fresh, rate, registry=registry,
                                                name="fresh-" + registry.name)
                    by_start = np.asarray([scores[int(s)] for s in fresh_starts])
                    results["loop"][name].setdefault("fresh", {})[row] = auc(
                        fresh_labels, per_sample(by_start, fresh_starts, window, len(fresh)))
        X, starts = windows_of(test, window)
        job_scores = np.asarray([served[int(s)] for s in starts])
        device_scores = np.asarray([own_scale[int(s)] for s in starts])
        holds = np.asarray([labels[s:s + window].any() for s in starts])
        after = np.arange(len(starts)) >= DEVICE_WINDOWS  # windows after the device's reference
        results["threshold"][name] = {
            scale: {"normal": float((scores[after & ~holds] >= 3).mean()),
                    "anomalous": float((scores[after & holds] >= 3).mean()) if (after & holds).any() else None,
                    "auc": auc(labels, per_sample(scores, starts, window, len(test)))}
            for scale, scores in (("model's scale", job_scores), ("device's own scale", device_scores))}
        in_process = model_scores(net, X)
        detectors = {"sensorloop model, through the serving job": job_scores,
                     "river HalfSpaceTrees": half_space_trees(windows_of(d["train"], window)[0], X, 0)}
        for detector, scores in detectors.items():
            results["anomaly"].setdefault(name, {})[detector] = auc(labels, per_sample(scores, starts, window,
                                                                                       len(test)))
        results["anomaly"][name]["aeon KMeansAD"] = auc(labels, kmeans_ad(d["train"], test, window, 0))
        results["job"][name] = {"windows": len(starts), "readings": len(test), "seconds": seconds,
                                "max_abs_difference": float(np.abs(job_scores - in_process).max()),
                                "flagged_share": float((job_scores >= 3).mean())}
        print(f"{name}: {len(starts)} windows served in {seconds:.1f} s", flush=True)
    return results


def report(results: dict) -> None:
    rows = [[name, detector, f"{roc:.3f}", f"{pr:.3f}"] for name, by in results["anomaly"].items()
            for detector, (roc, pr) in by.items()]
    print_table("Anomaly detection through the real serving job, per sample (seed 0)",
                ["data", "detector", "ROC-AUC", "PR-AUC"], rows)
    print_table("What the job served", ["data", "readings", "windows", "seconds", "windows scoring 3+",
                                        "largest |job - in-process| score"],
                [[name, j["readings"], j["windows"], f"{j['seconds']:.1f}", f"{j['flagged_share']:.3f}",
                  f"{j['max_abs_difference']:.2e}"] for name, j in results["job"].items()])
    print_table(f"Windows scoring 3+ after the device's first {DEVICE_WINDOWS}, on the model's scale and on the "
                "device's own (serving.anomaly_device_windows)",
                ["data", "scale", "normal windows", "windows holding an anomaly", "ROC-AUC", "PR-AUC"],
                [[name, scale, f"{t['normal']:.3f}", "-" if t["anomalous"] is None else f"{t['anomalous']:.3f}",
                  f"{t['auc'][0]:.3f}", f"{t['auc'][1]:.3f}"]
                 for name, by in results["threshold"].items() for scale, t in by.items()])
    for name, lp in results.get("loop", {}).items():
        print(f"\n{name}, the loop through both jobs: {lp['served']} of {lp['expected']} windows served, answers "
              f"{lp['answers']}, versions published {lp['versions']} in {lp['seconds']:.0f} s; the newest learned "
              f"{lp['newest_metrics'].get('unlabeled_windows', 0):.0f} unlabeled windows "
              f"({lp['newest_metrics'].get('unlabeled_windows_set_aside', 0):.0f} set aside)")
        print_table(f"{name}: the served version on faults injected afresh, through the serving job",
                    ["data", "model", "ROC-AUC", "PR-AUC"],
                    [[name, row, f"{roc:.3f}", f"{pr:.3f}"] for row, (roc, pr) in lp.get("fresh", {}).items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--no-loop", action="store_true", help="skip the pass through both jobs with answers")
    args = parser.parse_args()
    results = run(args.epochs, loop=not args.no_loop)
    report(results)
    save("anomaly_jobs", results)


if __name__ == "__main__":
    main()
