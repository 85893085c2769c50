"""GPU check: ONNX Runtime's CUDA execution provider vs the CPU on the same machine, then the serving
job on the GPU for a minute.

1. Windows/s vs batch size for the BasicMotions model (the registry's newest version): CPU (FP32,
   INT8), CUDA (FP32, FP16, INT8 where its nodes run there) with I/O binding, so batches and
   probabilities stay on the device between calls (the copy in and out is measured separately, as
   "with copies").
2. The serving job (embedded broker, Flink MiniCluster, ``serving.device = "cuda"``) on a replayed
   backlog for ``--job-seconds``: predictions/s and the provider the job's inference reports.

On a machine where the CUDA provider does not load it measures the CPU rows and says what it skipped.

Run: ``python bench/gpu_bench.py [--seconds 1.0] [--job-seconds 60]``; writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, save  # noqa: E402
from model.quantize import quantize_int8  # noqa: E402
from model.registry import ModelRegistry  # noqa: E402
from model.runtime import cuda_provider_loads  # noqa: E402

BATCHES = [1, 8, 32, 64, 128, 256, 1024, 4096]


def session(graph: bytes, provider: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(graph, options, providers=[provider, "CPUExecutionProvider"])


def rate(run, n: int, seconds: float) -> float:
    run()  # warm-up (CUDA: kernels chosen, memory allocated)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        done += n
    return done / (time.perf_counter() - started)


def cpu_rate(graph: bytes, x: np.ndarray, seconds: float) -> float:
    s = session(graph, "CPUExecutionProvider")
    name = s.get_inputs()[0].name
    return rate(lambda: s.run(None, {name: x}), len(x), seconds)


def cuda_rates(graph: bytes, x: np.ndarray, seconds: float, input_type=np.float32) -> tuple[float, float]:
    """(windows/s with the batch already on the GPU, windows/s copying it in and the result out)."""
    import onnxruntime as ort

    s = session(graph, "CUDAExecutionProvider")
    name, out = s.get_inputs()[0].name, s.get_outputs()[0].name
    x = x.astype(input_type)
    on_device = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    binding = s.io_binding()
    binding.bind_ortvalue_input(name, on_device)
    binding.bind_output(out, "cuda")
    resident = rate(lambda: s.run_with_iobinding(binding), len(x), seconds)
    copies = rate(lambda: s.run(None, {name: x}), len(x), seconds)
    return resident, copies


def fp16(graph: bytes) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load_from_string(graph), keep_io_types=True).SerializeToString()


def serving_on_gpu(registry: str, seconds: float) -> dict:
    """The serving job with serving.device = cuda on a replayed backlog, for ``seconds``."""
    import orjson

    from control.launcher import serving_job
    from control.replayer import replay
    from infra.broker import EmbeddedBroker, ensure_topics
    from infra.kafka_tools import TopicTail
    from schemas import Topics

    topics = Topics()
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp, \
            EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        ensure_topics(broker.bootstrap, topics)
        stats = Path(tmp) / "stats.jsonl"
        replay(broker.bootstrap, topics.readings, rate=0, count=200_000, n_devices=64, samples_per_message=50)
        job = serving_job(broker.bootstrap, Path(tmp) / "job.log", registry=registry, device="cuda",
                          max_batch=1024, max_wait_ms=20, state_dir=str(Path(tmp) / "ck"), stats_file=str(stats))
        tail = TopicTail(broker.bootstrap, [topics.predictions])
        got, first = 0, None
        with job:
            deadline = time.monotonic() + seconds + 120
            while time.monotonic() < deadline:
                got += len(batch := tail.poll(200))
                if batch and first is None:
                    first = time.monotonic()
                if first is not None and time.monotonic() - first >= seconds:
                    break
                if not job.alive():
                    raise RuntimeError("serving job died:\n" + job.log_tail(60))
            elapsed = time.monotonic() - (first or time.monotonic())
        tail.close()
        lines = [orjson.loads(line) for line in stats.read_text().splitlines()] if stats.exists() else []
    return {"predictions": got, "seconds": elapsed, "predictions_per_s": got / elapsed if elapsed else 0.0,
            "provider": lines[-1]["provider"] if lines else "unknown",
            "model_windows_per_s": lines[-1]["windows"] / lines[-1]["model_seconds"] if lines else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per point")
    parser.add_argument("--job-seconds", type=float, default=60.0)
    parser.add_argument("--registry", default="var/registry")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    args = parser.parse_args()
    loaded = ModelRegistry(args.registry).load("basic-motions")
    fp32 = loaded.onnx_bytes
    int8 = quantize_int8(fp32)
    cuda = cuda_provider_loads()
    skipped = [] if cuda else ["CUDA rows and the serving job on the GPU: the CUDA execution provider does not load "
                               "on this machine (no NVIDIA driver or CUDA libraries)"]
    half = None
    if cuda:
        try:
            half = fp16(fp32)
        except Exception as exc:  # noqa: BLE001 - report it, measure the rest
            skipped.append(f"FP16: conversion failed ({exc})")
    rng = np.random.default_rng(0)
    rows = []
    for b in [int(v) for v in args.batches.split(",")]:
        x = rng.normal(size=(b, 32, 6)).astype(np.float32)
        row = {"batch": b, "cpu_fp32": cpu_rate(fp32, x, args.seconds), "cpu_int8": cpu_rate(int8, x, args.seconds)}
        if cuda:
            row["cuda_fp32"], row["cuda_fp32_copies"] = cuda_rates(fp32, x, args.seconds)
            if half is not None:
                row["cuda_fp16"], _ = cuda_rates(half, x, args.seconds)
            row["cuda_int8"], _ = cuda_rates(int8, x, args.seconds)
        rows.append(row)
        print(row, flush=True)
    columns = ["batch", "cpu_fp32", "cpu_int8"] + (["cuda_fp32", "cuda_fp32_copies", "cuda_fp16", "cuda_int8"]
                                                  if cuda else [])
    print_table("Windows/s by execution provider and precision (BasicMotions model, window 32 x 6)", columns,
                [[r.get(c, "-") for c in columns] for r in rows])
    job = serving_on_gpu(args.registry, args.job_seconds) if cuda else None
    if job:
        print(f"serving job on the GPU for {job['seconds']:.0f} s: {job['predictions_per_s']:,.0f} predictions/s, "
              f"provider {job['provider']}, model alone {job['model_windows_per_s']:,.0f} windows/s")
    for line in skipped:
        print(f"skipped: {line}")
    print(f"results: {save('gpu', {'rows': rows, 'serving_job': job, 'skipped': skipped})}")


if __name__ == "__main__":
    main()
