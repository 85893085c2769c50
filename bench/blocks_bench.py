"""Serving throughput with sample blocks: samples/s vs samples per message, next to the pass-through
job (same KafkaSource and KafkaSink, no Python operator) and the plain-Python consumer a user would
write instead (``bench/plain_consumer.py``) on the same messages, in one run.

For each block size, a fresh broker gets a preloaded backlog of BasicMotions readings from 64 devices
packed into blocks (``--samples-per-message`` of the replayer); the serving job (window 32, stride 8)
then drains it, timed from its first prediction to its last; the pass-through job drains the same
messages on another fresh broker. Ratios are within one run (the machine is shared and noisy).

Latency: at ``--latency-rate`` messages/s (1,000) for each of ``--latency-sizes`` samples per message,
p50/p99 from a message's Kafka timestamp to the moment a consumer receives the prediction of a window
it completes (``serving_bench.measure_latency``, 20 s after a warm-up), next to the plain consumer (in a
process of its own, ``--follow``) and the pass-through job at the same message rate.

``--stride 32`` cuts a window every 32 samples instead of 8: a quarter of the windows to score for the same
samples, which shows how much of the job's time per sample is the model's (results ``blocks_stride32``).
``--patch 1,4`` serves (and the plain consumer scores with) each of these models in turn, one whose encoder reads 4
samples per token trained here on BasicMotions into a registry of the run's own (results ``blocks_patch1_4``): the
same windows for about a quarter of the model's work. The pass-through job runs once per size.

``--layouts sharded,per_device`` runs the serving job in each ``serving.layout`` on the same messages (one row
each); ``--inference-threads`` sets its ONNX Runtime threads per batch (the plain consumer keeps one).

Run: ``python bench/blocks_bench.py [--sizes 1,10,50,250] [--samples 600000] [--latency-sizes 1,10,25]
[--stride 8] [--patch 1,4] [--layouts sharded] [--inference-threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, line_plot, print_table, save  # noqa: E402
from bench import plain_consumer  # noqa: E402
from bench.serving_bench import (  # noqa: E402
    Scenario,
    drain,
    drain_gauged,
    expected_windows,
    in_job_model_rate,
    job_cpu_split,
    measure_latency,
    process_cpu_s,
    standalone_onnx,
)
from control.replayer import replay  # noqa: E402
from schemas import Topics  # noqa: E402

TOPICS = Topics()
DEVICES = 64


def measure(work: Path, kind: str, size: int, samples: int, registry: str, tag: str = "", stride: int = 8,
            **job_options) -> dict:
    """``serving`` (the job), ``passthrough`` (the job without Python) or ``plain`` (bench/plain_consumer.py,
    no Flink) on a fresh broker with the same backlog. For the job, also the model's own rate inside it per
    CPU-second of the inference thread, against standalone ONNX Runtime at the same mean batch size.
    ``job_options`` are the serving job's settings (``group_ms=0``: each message crosses into Python alone)."""
    stats_file = work / f"inference-blocks-{size}{tag}.jsonl"
    options = ({"registry": registry, "stride": stride, "stats_file": str(stats_file), **job_options}
               if kind == "serving" else {})
    sc = Scenario(work, f"blocks-{kind}{tag}-{size}", "broker" if kind == "plain" else kind, **options)
    try:
        stats = replay(sc.bootstrap, TOPICS.readings, rate=0, count=samples, n_devices=DEVICES,
                       samples_per_message=size)
        expected = expected_windows(samples, DEVICES, 32, stride) if kind != "passthrough" else stats.messages
        if kind == "plain":
            def plain_cpu() -> dict[str, float]:  # the plain consumer runs in this process
                return {"consumer": process_cpu_s(os.getpid()), "broker": sc.broker_cpu_s()}

            got, seconds, cpu = plain_consumer.run(sc.bootstrap, expected, registry, stride=stride, gauge=plain_cpu,
                                                   precision=job_options.get("precision", "fp32"))
        elif kind == "serving":
            got, seconds, cpu = drain_gauged(sc, expected, lambda: job_cpu_split(sc))
        else:
            (got, seconds), cpu = drain(sc, expected), {}
        # serving and plain: the first prediction comes once each device's first window is full; samples
        # before it are not timed. Pass-through: every message is an output.
        if kind != "passthrough":
            timed = samples * got / expected - DEVICES * 32
            messages_per_s = timed / size / seconds
            samples_per_s = timed / seconds
        else:
            messages_per_s = got / seconds
            samples_per_s = messages_per_s * size
        result = {"kind": kind, "samples_per_message": size, "samples": samples, "messages": stats.messages,
                  "outputs": got, "expected": expected, "seconds": seconds, "samples_per_s": samples_per_s,
                  "messages_per_s": messages_per_s,
                  "cores": {k: v / seconds for k, v in cpu.items()} if isinstance(cpu, dict) else {}}
        if kind == "serving":
            model = in_job_model_rate(stats_file)  # cumulative numbers the operator wrote every second while scoring
            alone = standalone_onnx(registry, max(1, round(model["mean_batch"])), threads=1, repeats=3,
                                    precision=job_options.get("precision", "fp32"))
            result.update(mean_batch=model["mean_batch"], in_job_per_cpu_s=model["in_job_cpu"],
                          in_job_per_wall_s=model["in_job"], runqueue_share=model["runqueue_share"],
                          standalone=alone)
        return result
    finally:
        sc.stop()


def replayed_payloads(size: int, samples: int) -> list[tuple[str, bytes]]:
    """``(device, payload)`` of the replayer's BasicMotions messages of ``size`` samples from 64 devices, in the
    order it sends them."""
    from model.datasets import load_basic_motions
    from operators.replay import BlockPacker, ReadingStream

    stream = ReadingStream(load_basic_motions("test"), DEVICES, 0)
    packer = BlockPacker(size) if size > 1 else None  # as the replayer sends them
    payloads = []
    for i in range(samples):
        reading = {**next(stream), "ts": 1_700_000_000_000 + i // DEVICES}
        message = reading if packer is None else packer.add(reading)
        if message is not None:
            payloads.append((message["device_id"], orjson.dumps(message)))
    return payloads


def shard_groups(size: int, samples: int, shards: int, group_readings: int) -> list[tuple[int, list]]:
    """The replayer's messages of ``size`` samples as the sharded layout's operator gets them in a drain:
    ``(shard, [(device, Message), ...])``, up to ``group_readings`` messages of one shard per group
    (``ReadingGrouper``), in the order they fill."""
    from operators.device_intake import Message
    from operators.shard_serving import shard_of

    groups, filling = [], {}
    for offset, (device, payload) in enumerate(replayed_payloads(size, samples)):
        shard = shard_of(device, shards)
        group = filling.setdefault(shard, [])
        group.append((device, Message(0, offset, 0, payload)))
        if len(group) >= group_readings:
            groups.append((shard, filling.pop(shard)))
    return groups + list(filling.items())


def _default_config(**env: str):
    import os

    from settings import load_config

    return load_config(None, {**os.environ, **env})


def intake_us_per_sample(size: int, samples: int = 120_000) -> float:
    """CPU microseconds per sample of the serving job's intake alone: decoding, validating and windowing the
    replayer's messages of ``size`` samples from 64 devices (``operators.device_intake.DeviceIntake``, each
    device's messages of a group at once, in the groups of :func:`shard_groups`; no Flink), the Python work every
    message costs before any framework or model."""
    from model.spec import BASIC_MOTIONS_CHANNELS
    from operators.device_intake import DeviceIntake
    from operators.model_routing import ServedModel
    from stream_jobs.serving_job import inference_shard_count

    cfg = _default_config()
    groups = shard_groups(size, samples, inference_shard_count(cfg), cfg.serving.group_readings)
    intake = DeviceIntake.for_models([ServedModel("m", tuple(BASIC_MOTIONS_CHANNELS), 32, 8)])
    states: dict = {}
    started = time.process_time()
    for _, group in groups:
        by_device: dict = {}
        for device, message in group:
            by_device.setdefault(device, []).append(message)
        for device, messages in by_device.items():
            out = intake.take(device, messages, states.get(device), 0)
            if out.dead_letters:
                raise RuntimeError(f"the intake refused a replayed message: {out.dead_letters[0].reason}")
            states[device] = out.state
    return (time.process_time() - started) * 1e6 / sum(len(group) * size for _, group in groups)


class _NoMetrics:
    """A metrics group that keeps nothing (the operator driven without Flink)."""

    def gauge(self, *_args, **_kwargs) -> None:
        return None

    def add_group(self, *_args) -> "_NoMetrics":
        return self


def operator_us_per_sample(size: int, registry: str, stride: int = 8, samples: int = 400_000) -> dict[str, float]:
    """CPU microseconds per sample of the sharded layout's operator alone, no Flink and no Kafka:
    ``ShardServing`` built as ``ServeShards.open`` builds it (the job's intake and inference shards, scoring on
    the calling thread), given the replayer's messages in groups of up to ``serving.group_readings`` per shard
    (as ``ReadingGrouper`` sends them in a drain), each call's outputs packed into the one record the job
    hands to Java (``kafka_io.packed``). ``operator``: all of it on this thread; ``model``: its ONNX Runtime calls; ``predictions``: how many
    it made (every window of every device). The job's task thread per
    sample less ``operator`` is what Flink adds (records into and out of Python, timers, state) and what the
    job's other threads and the broker on the other core cost the same work."""
    from operators.shard_serving import IDLE_FLUSH_MS, DeviceTable, ShardServing
    from stream_jobs.kafka_io import packed
    from stream_jobs.serving_job import inference_shard_count, served_models
    from stream_jobs.serving_parts import device_intake, open_inference_shards

    cfg = _default_config(SENSORLOOP_REGISTRY_PATH=registry, SENSORLOOP_SERVING_STRIDE=str(stride))
    models, shards = served_models(cfg), inference_shard_count(cfg)
    inference = open_inference_shards(cfg, models, "", _NoMetrics())
    serving = ShardServing(device_intake(cfg, models), inference, cfg.serving.device_expiry_ms, IDLE_FLUSH_MS,
                           threaded=False)
    groups = shard_groups(size, samples, shards, cfg.serving.group_readings)
    tables = {shard: DeviceTable() for shard in range(shards)}
    now, predictions = 1_700_000_010_000, 0

    def hand_over(outgoing) -> int:
        """What the job does with a call's outputs; how many are predictions."""
        packed(outgoing)
        return sum(out.topic == cfg.topics.predictions for out in outgoing)

    started = time.thread_time()
    for shard, group in groups:
        served = serving.take(tables[shard], group, now)
        if served.dead_letters:
            raise RuntimeError(f"the operator refused a replayed message: {served.dead_letters[0].reason}")
        predictions += hand_over(served.outgoing)
    predictions += hand_over(serving.flush(now) + serving.drain())
    spent = time.thread_time() - started
    model = sum(shard.scorer.stats.inference_cpu_s for shard in inference.values())
    serving.close()
    return {"operator": spent * 1e6 / samples, "model": model * 1e6 / samples, "predictions": predictions}


def cpu_budget(row: dict) -> dict:
    """CPU microseconds per sample: the job's Python threads (``python``); the sharded operator alone on the same
    messages without Flink (``operator``, :func:`operator_us_per_sample`), split into the intake alone
    (``intake``), its model calls (``model``) and the inference code's own Python (``scoring_rest``: batching,
    predictions, review routing, the confidence watch, routed records); ``framework``: the job's threads less the
    operator alone (records into and out of Python, timers, state, and what sharing the machine with the job's
    Java threads and the broker costs the same Python work). Beside it, the whole plain consumer.

    >>> b = cpu_budget({"serving_samples_per_s": 25_000, "serving_cores": {"parse": 0, "inference": 0, "serve": 1.0},
    ...                 "intake_us": 10.0, "operator_us": {"operator": 30.0, "model": 12.5},
    ...                 "plain_samples_per_s": 40_000, "plain_cores": {"consumer": 1.0}})
    >>> {k: round(v, 1) for k, v in b.items()}
    {'python': 40.0, 'operator': 30.0, 'intake': 10.0, 'model': 12.5, 'scoring_rest': 7.5, 'framework': 10.0, 'plain': 25.0}
    """
    cores = row["serving_cores"]
    threads = sum(cores.get(k, 0.0) for k in ("parse", "inference", "serve", "scoring")) or float("nan")
    python = threads * 1e6 / row["serving_samples_per_s"]
    alone = row["operator_us"]
    plain = row["plain_cores"].get("consumer", float("nan")) * 1e6 / row["plain_samples_per_s"]
    return {"python": python, "operator": alone["operator"], "intake": row["intake_us"], "model": alone["model"],
            "scoring_rest": alone["operator"] - row["intake_us"] - alone["model"],
            "framework": python - alone["operator"], "plain": plain}


def per_cpu_s(row: dict, kind: str) -> float:
    """Samples per CPU-second of ``kind`` (serving: the job and its broker; plain: the consumer and its broker).

    >>> per_cpu_s({"plain_samples_per_s": 40_000, "plain_cores": {"consumer": 0.75, "broker": 0.25}}, "plain")
    40000.0
    """
    cores = row[f"{kind}_cores"]
    used = cores.get("job", cores.get("consumer", float("nan"))) + cores.get("broker", float("nan"))
    return row[f"{kind}_samples_per_s"] / used


def call_shares(row: dict) -> list[str]:
    """Of the model calls' wall-clock time inside the job: the shares on the CPU, waiting in the run queue,
    and waiting otherwise (for the interpreter lock after ONNX Runtime returns, mostly).

    >>> call_shares({"in_job_per_cpu_s": 10_000, "in_job_per_wall_s": 5_000, "runqueue_share": 0.2})
    ['50 %', '20 %', '30 %']
    """
    on_cpu = row["in_job_per_wall_s"] / row["in_job_per_cpu_s"]
    queued = row["runqueue_share"]
    return [f"{100 * on_cpu:.0f} %", f"{100 * queued:.0f} %", f"{100 * max(0.0, 1 - on_cpu - queued):.0f} %"]


def model_bound(row: dict) -> float:
    """The messages/s the model alone allows: standalone windows/s on one thread, a window per ``stride``
    samples, ``samples_per_message`` samples a message, with parsing, windowing and Kafka costing nothing.

    >>> model_bound({"standalone": 20_000, "stride": 8, "samples_per_message": 50})
    3200.0
    """
    return row["standalone"] * row["stride"] / row["samples_per_message"]


def serving_row(work: Path, size: int, samples: int, registry: str, patch: int, layout: str, stride: int,
                ungrouped: bool, plain: dict, passthrough: dict, intake_us: float, threads: int = 1,
                operator_us: dict | None = None) -> dict:
    """The serving job in ``layout`` (and, with ``ungrouped``, with each message crossing alone) beside the plain
    consumer's and the pass-through job's runs on the same messages."""
    tag = f"-patch{patch}-{layout}"
    serving = measure(work, "serving", size, samples, registry, tag, stride=stride, layout=layout,
                      inference_threads=threads)
    alone = (measure(work, "serving", size, samples, registry, tag + "-ungrouped", stride=stride, layout=layout,
                     inference_threads=threads, group_ms=0) if ungrouped else None)
    return {"samples_per_message": size, "stride": stride, "patch": patch, "layout": layout, "samples": samples,
            "inference_threads": threads,
            "messages": serving["messages"], "serving_samples_per_s": serving["samples_per_s"],
            "ungrouped_samples_per_s": alone["samples_per_s"] if alone else None,
            "plain_samples_per_s": plain["samples_per_s"],
            "serving_vs_plain": serving["samples_per_s"] / plain["samples_per_s"],
            "serving_messages_per_s": serving["messages_per_s"],
            "passthrough_messages_per_s": passthrough["messages_per_s"],
            "serving_vs_passthrough": serving["messages_per_s"] / passthrough["messages_per_s"],
            "windows": f"{serving['outputs']}/{serving['expected']}",
            "serving_cores": serving["cores"], "plain_cores": plain["cores"], "intake_us": intake_us,
            "operator_us": operator_us or {"operator": float("nan"), "model": float("nan")},
            "windows_ungrouped": f"{alone['outputs']}/{alone['expected']}" if alone else None,
            **{k: serving[k] for k in ("mean_batch", "in_job_per_cpu_s", "in_job_per_wall_s", "runqueue_share",
                                       "standalone")}}


def patch_registry(folder: Path, patch: int, int8: bool = False) -> str:
    """A registry holding a BasicMotions model whose encoder reads ``patch`` samples per token (``int8``: with
    the INT8 graph a publish keeps when it agrees with FP32 on 0.98 of the held-out windows)."""
    from model.registry import INT8_FILE, ModelRegistry
    from model.spec import ModelSpec
    from model.train import bootstrap

    result = bootstrap(ModelRegistry(folder), spec=ModelSpec(patch=patch), int8_min_agreement=0.98 if int8 else None)
    metrics = result.metadata.metrics
    print(f"served model: {patch} samples per token, test accuracy {metrics['test_accuracy']:.3f}"
          + (f", INT8 agreement {metrics.get('int8_agreement', float('nan')):.3f}" if int8 else ""))
    if int8 and INT8_FILE not in result.metadata.artifacts:
        raise SystemExit("the trained model's INT8 graph was refused: see the log above")
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,10,50,250")
    parser.add_argument("--samples", type=int, default=600_000, help="samples per run (at most 200,000 messages)")
    parser.add_argument("--registry", default="var/registry")
    parser.add_argument("--latency-sizes", default="1,10,25", help="samples per message of the latency runs")
    parser.add_argument("--latency-rate", type=int, default=1000, help="messages per second of the latency runs")
    parser.add_argument("--stride", type=int, default=8,
                        help="samples between window ends (8: a window per 8 samples; the window is 32)")
    parser.add_argument("--patch", default="1",
                        help="samples per token of the served model, comma-separated for several in one run (above "
                             "1: a model trained here, in a registry of its own)")
    parser.add_argument("--layouts", default="sharded",
                        help="serving.layout of the serving job, comma-separated for several in one run "
                             "(sharded, per_device)")
    parser.add_argument("--inference-threads", type=int, default=1,
                        help="serving.inference_threads of the serving job (ONNX Runtime's threads per batch; the "
                             "plain consumer keeps 1)")
    parser.add_argument("--no-ungrouped", dest="ungrouped", action="store_false",
                        help="skip the serving job with serving.group_ms = 0 (each message crosses into Python alone)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    latency_sizes = [int(s) for s in args.latency_sizes.split(",") if s]
    patches = [int(p) for p in str(args.patch).split(",") if p]
    layouts = [x for x in args.layouts.split(",") if x]
    keep = tempfile.TemporaryDirectory(prefix="blocks-registry-")
    registries = {p: patch_registry(Path(keep.name) / f"patch{p}", p) if p > 1 else args.registry for p in patches}
    if latency_sizes:
        latency(latency_sizes, args.latency_rate, registries[patches[0]], ungrouped=args.ungrouped)
    if not sizes:
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="blocks-bench-") as tmp:
        work = Path(tmp)
        for size in sizes:
            samples = min(args.samples, 200_000 * size)  # single readings: 200,000 messages (a drain of several seconds)
            intake_us = intake_us_per_sample(size)
            passthrough = measure(work, "passthrough", size, samples, args.registry)
            for patch, registry in registries.items():
                plain = measure(work, "plain", size, samples, registry, f"-patch{patch}", stride=args.stride)
                operator_us = operator_us_per_sample(size, registry, args.stride)
                for layout in layouts:
                    rows.append(serving_row(work, size, samples, registry, patch, layout, args.stride, args.ungrouped,
                                            plain, passthrough, intake_us, args.inference_threads,
                                            operator_us if layout == "sharded" else None))
                    print(rows[-1], flush=True)
    header = ["samples per message", "samples per token", "layout", "samples", "messages", "serving samples/s",
              "serving, messages not grouped", "grouped / not", "plain consumer samples/s", "serving / plain",
              "serving messages/s", "pass-through messages/s", "serving / pass-through (messages)", "windows out/expected"]
    name = "blocks" + (f"_stride{args.stride}" if args.stride != 8 else "") + (
        "_patch" + "_".join(map(str, patches)) if patches != [1] else "")
    print_table(f"Serving throughput with sample blocks (backlog, 64 devices, window 32, stride {args.stride})", header,
                [[r["samples_per_message"], r["patch"], r["layout"], r["samples"], r["messages"], r["serving_samples_per_s"],
                  r["ungrouped_samples_per_s"] or "-",
                  round(r["serving_samples_per_s"] / r["ungrouped_samples_per_s"], 2) if r["ungrouped_samples_per_s"] else "-",
                  r["plain_samples_per_s"], round(r["serving_vs_plain"], 2), r["serving_messages_per_s"],
                  r["passthrough_messages_per_s"], round(r["serving_vs_passthrough"], 2), r["windows"]] for r in rows])
    print_table("The model inside the job (windows per second of the inference thread's CPU time, and of its "
                "wall-clock time) vs standalone ONNX Runtime, one thread, at the same mean batch size. Of the model "
                "calls' wall-clock time: on the CPU, waiting for a CPU (run queue), and waiting otherwise (the "
                "interpreter lock, to return from ONNX Runtime)",
                ["samples per message", "samples per token", "layout", "mean batch", "in job per CPU-second",
                 "in job per wall-clock second", "on CPU", "run queue", "other waits", "standalone",
                 "in job (CPU) / standalone", "model-bound messages/s", "model bound / pass-through"],
                [[r["samples_per_message"], r["patch"], r["layout"], round(r["mean_batch"], 1), r["in_job_per_cpu_s"],
                  r["in_job_per_wall_s"], *call_shares(r), r["standalone"],
                  round(r["in_job_per_cpu_s"] / r["standalone"], 2),
                  round(model_bound(r)), round(model_bound(r) / r["passthrough_messages_per_s"], 2)] for r in rows])
    print_table("Where the CPU went from the first prediction to the last, in cores (this machine has "
                f"{os.cpu_count()}): the serving job (all its threads; its Python operators' task threads, which "
                "share one interpreter lock: serve-shards, or parse-and-window and inference; the broker) and the "
                "plain consumer (its process; the broker)",
                ["samples per message", "samples per token", "layout", "job", "serve-shards thread", "scoring thread",
                 "parse-and-window thread", "inference thread", "broker (job)", "plain consumer", "broker (plain)", "serving samples per CPU-second (job + broker)",
                 "plain samples per CPU-second (consumer + broker)", "serving / plain, per CPU-second"],
                [[r["samples_per_message"], r["patch"], r["layout"],
                  *(r["serving_cores"].get(k, float("nan"))
                    for k in ("job", "serve", "scoring", "parse", "inference", "broker")),
                  *(r["plain_cores"].get(k, float("nan")) for k in ("consumer", "broker")),
                  per_cpu_s(r, "serving"), per_cpu_s(r, "plain"), per_cpu_s(r, "serving") / per_cpu_s(r, "plain")]
                 for r in rows])
    print_table("CPU microseconds per sample: the job's Python threads; the sharded operator alone on the same "
                "messages (no Flink, no Kafka), of which the intake (decode, validate, window), the model and the rest "
                "of the scoring code; what the job's threads spend beyond the operator alone (Flink, and sharing the "
                "machine); beside it the whole plain consumer",
                ["samples per message", "samples per token", "layout", "job's Python threads", "operator alone",
                 "intake", "model", "rest of scoring", "job beyond the operator alone", "plain consumer (all of it)"],
                [[r["samples_per_message"], r["patch"], r["layout"], *cpu_budget(r).values()] for r in rows])
    print(f"results: {save(name, {'rows': rows})}")
    series = []
    for patch in patches:
        token = f", {patch} samples per token" if patches != [1] else ""
        for layout in layouts:
            own = [r for r in rows if r["patch"] == patch and r["layout"] == layout]
            sizes, named = [r["samples_per_message"] for r in own], token + (f", {layout}" if layouts != ["sharded"] else "")
            series += [(f"serving job{named}", sizes, [r["serving_samples_per_s"] for r in own], {"marker": "o"}),
                       *([(f"serving job, messages not grouped{named}", sizes,
                           [r["ungrouped_samples_per_s"] for r in own], {"marker": "x"})]
                         if own[0]["ungrouped_samples_per_s"] else [])]
        own = [r for r in rows if r["patch"] == patch and r["layout"] == layouts[0]]
        series.append((f"plain-Python consumer (bench/plain_consumer.py){token}", [r["samples_per_message"] for r in own],
                       [r["plain_samples_per_s"] for r in own], {"marker": "^"}))
    own = [r for r in rows if r["patch"] == patches[0] and r["layout"] == layouts[0]]
    series.append(("pass-through job (messages/s x samples per message)", [r["samples_per_message"] for r in own],
                   [r["passthrough_messages_per_s"] * r["samples_per_message"] for r in own], {"marker": "s"}))
    line_plot(RESULTS / f"{name}.png", series,
              "samples per message", "samples/s", "Throughput with sample blocks", log2_x=True)

def latency(sizes: list[int], messages_per_s: int, registry: str, seconds: float = 20.0, ungrouped: bool = True) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="blocks-latency-") as tmp:
        for size in sizes:
            rate = messages_per_s * size  # the replayer's rate is in samples/s
            serving = measure_latency(Path(tmp), "serving", rate, seconds, registry, tag=f"-b{size}", stride=8,
                                      samples_per_message=size)
            alone = (measure_latency(Path(tmp), "serving", rate, seconds, registry, tag=f"-b{size}-ungrouped", stride=8,
                                     samples_per_message=size, group_ms=0) if ungrouped else None)
            passthrough = measure_latency(Path(tmp), "passthrough", rate, seconds, registry, tag=f"-b{size}",
                                          samples_per_message=size)
            plain = measure_latency(Path(tmp), "plain", rate, seconds, registry, tag=f"-b{size}", stride=8,
                                    samples_per_message=size)
            rows.append({"samples_per_message": size, "messages_per_s": messages_per_s, "samples_per_s": rate,
                         "serving_sent_samples_per_s": serving["sent_per_s"],
                         "serving_p50_ms": serving["p50_ms"], "serving_p99_ms": serving["p99_ms"],
                         "ungrouped_p50_ms": alone["p50_ms"] if alone else None,
                         "ungrouped_p99_ms": alone["p99_ms"] if alone else None,
                         "passthrough_p50_ms": passthrough["p50_ms"], "passthrough_p99_ms": passthrough["p99_ms"],
                         "plain_p50_ms": plain["p50_ms"], "plain_p99_ms": plain["p99_ms"],
                         "windows": serving["outputs"], "plain_windows": plain["outputs"]})
            print(rows[-1], flush=True)
    print_table(f"Latency at {messages_per_s:,} messages/s (message timestamp -> prediction received)",
                ["samples per message", "samples/s sent", "serving p50 ms", "serving p99 ms",
                 "not grouped p50 ms", "not grouped p99 ms", "plain consumer p50 ms", "plain consumer p99 ms",
                 "pass-through p50 ms", "pass-through p99 ms", "predictions (serving / plain)"],
                [[r["samples_per_message"], round(r["serving_sent_samples_per_s"]), r["serving_p50_ms"],
                  r["serving_p99_ms"], r["ungrouped_p50_ms"] or "-", r["ungrouped_p99_ms"] or "-", r["plain_p50_ms"],
                  r["plain_p99_ms"], r["passthrough_p50_ms"], r["passthrough_p99_ms"],
                  f"{r['windows']} / {r['plain_windows']}"] for r in rows])
    print(f"results: {save('blocks_latency', {'rows': rows})}")


if __name__ == "__main__":
    main()
