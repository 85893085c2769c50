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

Run: ``python bench/anomaly_jobs_bench.py``; writes bench/results/anomaly_jobs.json. About 5 minutes.
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

from bench.anomaly_bench import (HORIZON, STRIDE, auc, datasets, half_space_trees, kmeans_ad,  # noqa: E402
                                 model_scores, per_sample, train_model, windows_of)
from bench.common import print_table, save  # noqa: E402
from model.self_supervised import windows_with_future  # noqa: E402
from model.spec import ModelSpec  # noqa: E402

T0 = 1_700_000_000_000
DEVICE_WINDOWS = 128  # serving.anomaly_device_windows of the second pass: the device's first 128 windows
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


def config_text(root: Path, model: str, spec: ModelSpec, rate_hz: float, device_windows: int = 0) -> str:
    lines = [f'[registry]\npath = "{root / "registry"}"\nmodel_name = "{model}"\n',
             "[serving]\naudit_rate = 0.0\nunlabeled_share = 0.0\nreview_budget_per_minute = 100000",
             f"anomaly_device_windows = {device_windows}\n",
             f"[models.{model}]", f"channels = {orjson.dumps(list(spec.channels)).decode()}",
             f"sample_rate_hz = {rate_hz}", f"window = {spec.window}", f"stride = {STRIDE}",
             f"tasks = {orjson.dumps(list(spec.tasks)).decode()}"]
    if spec.horizon:
        lines.append(f"forecast_horizon = {spec.horizon}")
    return "\n".join(lines) + "\n"


def through_the_job(root: Path, model: str, spec: ModelSpec, test: np.ndarray, rate_hz: float,
                    device_windows: int = 0) -> tuple[dict[int, float], float]:
    """Send ``test`` as one device's readings through the serving job (``device_windows``: its
    ``serving.anomaly_device_windows``); each served window's anomaly score by its first sample's index, and
    the seconds from the first reading sent to the last prediction read."""
    from control.launcher import serving_job
    from infra.broker import EmbeddedBroker, ensure_topics
    from infra.kafka_tools import produce, read_until
    from schemas import Prediction, Topics

    topics = Topics()
    pass_dir = root / f"device-windows-{device_windows}"  # each pass its own configuration, state and logs
    pass_dir.mkdir()
    config = pass_dir / "sensorloop.toml"
    config.write_text(config_text(root, model, spec, rate_hz, device_windows))
    ts = T0 + np.round(np.arange(len(test)) * 1000.0 / rate_hz).astype(np.int64)
    index = {int(t): i for i, t in enumerate(ts)}
    expected = len(range(0, len(test) - spec.window + 1, STRIDE))
    readings = [(b"sensor-1", orjson.dumps({"device_id": "sensor-1", "ts": int(t), "values": row.tolist()}))
                for t, row in zip(ts, test.astype(np.float64))]
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
    scores = {}
    for r in records:
        p = Prediction.decode(r.value)
        scores[index[p.window_start]] = float(p.anomaly)
    if len(scores) != expected:
        raise RuntimeError(f"{model}: the job served {len(scores)} windows of {expected}")
    return scores, seconds


def run(epochs: int) -> dict:
    results: dict = {"anomaly": {}, "job": {}, "threshold": {}}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    results = run(args.epochs)
    report(results)
    save("anomaly_jobs", results)


if __name__ == "__main__":
    main()
