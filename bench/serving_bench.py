"""End-to-end serving benchmark on the embedded broker and a local Flink MiniCluster.

Measured in the same run, each on a fresh broker:
- throughput: readings/s the serving job sustains on a preloaded backlog, next to the
  pass-through job (same KafkaSource and KafkaSink, no Python operator);
- latency: p50/p99 reading→prediction latency at several input rates (a reading's
  Kafka timestamp to the moment a consumer receives the prediction of the window it ends),
  next to the pass-through job's reading→copy latency and the broker alone (the same
  sender and consumer, no job: reading→reading) at the same rate;
- inference inside the job: windows/s with stride 1 (every reading makes a window) at steady
  rates and on a backlog, against standalone ONNX Runtime at the same batch size; once with every
  process at the same CPU priority, and once more with the broker, the load generator and the
  measuring consumer yielding the cores to the job (their scheduler autogroups at nice 10, as if
  they ran on other machines), which tells the job's own overhead from the co-located services'.

Run: ``python bench/serving_bench.py [--rates 500,1000,2500,5000] [--seconds 20] [--preload 200000]``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, line_plot, print_table, save  # noqa: E402
from infra.broker import EmbeddedBroker, create_topics, ensure_topics  # noqa: E402
from infra.kafka_tools import TopicTail  # noqa: E402
from operators.scoring_pipeline import THREAD_NAME  # noqa: E402
from schemas import Topics  # noqa: E402
from control.launcher import JobProcess, job_process, serving_job  # noqa: E402
from control.replayer import DEFAULT_LINGER_MS, replay  # noqa: E402

TOPICS = Topics()
PASS_TOPIC = "passthrough"
YIELD_NICE = 10
# set in the pass where the other services yield: the autogroup nice given to each broker started
OTHERS_NICE: int | None = None


def autogroups_enabled() -> bool:
    """Whether the kernel schedules sessions as groups (``kernel.sched_autogroup_enabled``)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


COUNTER_NICE = 19  # the autogroup nice of the process that counts a drained job's outputs


def yield_cpu(pid: int | str, nice: int = YIELD_NICE) -> None:
    """Lower the CPU priority of the scheduler autogroup (session) of ``pid`` to ``nice``, so that
    under contention other sessions get the cores first; raising a nice value needs no privilege."""
    group = Path(f"/proc/{pid}/autogroup")
    group.write_text(str(nice))
    if not group.read_text().rstrip().endswith(f"nice {nice}"):
        raise RuntimeError(f"{group} did not take nice {nice}: {group.read_text().strip()}")


def stat_cpu_s(stat: str) -> float:
    """User + system CPU seconds from the text of a ``/proc/<pid>[/task/<tid>]/stat`` file."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; NaN when unknown."""
    try:
        return stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, TypeError):
        return float("nan")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process started below it (found through each process's parent id)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += parents.get(found[-1], [])
    return found


def thread_cpu_s(pids: list[int]) -> dict[str, float]:
    """CPU seconds used so far by the threads of ``pids``, summed per thread name."""
    out: dict[str, float] = {}
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1:text.rindex(")")]
            out[name] = out.get(name, 0.0) + stat_cpu_s(text)
    return out


def processes_cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by the processes ``pids``, threads that have ended included (a process's own
    figure keeps them; summing its live threads would not); NaN once one of them has ended."""
    return sum(process_cpu_s(pid) for pid in pids)


def thread_growth(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each thread name used between two readings of :func:`thread_cpu_s`. A name some of whose
    threads ended in between shows what its live threads used, never less than nothing.

    >>> thread_growth({"a": 5.0, "b": 1.0}, {"a": 2.0, "b": 1.5, "c": 0.5})
    {'a': 0.0, 'b': 0.5, 'c': 0.5}
    """
    return {name: max(0.0, cpu - before.get(name, 0.0)) for name, cpu in after.items()}


class CpuSplit:
    """Where the CPU went while a run was measured, in % of one core, per part (a list of
    processes), with the job's busiest threads."""

    def __init__(self, parts: dict[str, list[int]]) -> None:
        self.parts = parts
        self.started = time.monotonic()
        self.before = {k: processes_cpu_s(p) for k, p in parts.items()}
        self.job_threads = thread_cpu_s(parts["job"]) if "job" in parts else {}

    def stop(self, top_threads: int = 4) -> dict:
        seconds = time.monotonic() - self.started
        # a part one of whose processes ended before the end has no figure (NaN)
        split = {k: round(100 * (processes_cpu_s(p) - self.before[k]) / seconds, 1) for k, p in self.parts.items()}
        if "job" in self.parts:
            used = thread_growth(self.job_threads, thread_cpu_s(self.parts["job"]))
            busiest = sorted(used.items(), key=lambda kv: -kv[1])[:top_threads]
            split["job_threads"] = {n: round(100 * v / seconds, 1) for n, v in busiest}
        return split


def start_sender(bootstrap: str, rate: float, seconds: float, stdout=subprocess.PIPE,
                 linger_ms: int = DEFAULT_LINGER_MS, samples_per_message: int = 1) -> subprocess.Popen:
    """The replayer at a fixed rate (samples/s) from 64 devices, in its own process so that it never
    competes with the measuring consumer for the GIL; it prints what it sent on ``stdout``."""
    return subprocess.Popen([sys.executable, "-m", "control.cli", "replay", "--bootstrap", bootstrap,
                             "--rate", str(rate), "--duration", str(seconds), "--devices", "64",
                             "--linger-ms", str(linger_ms), "--samples-per-message", str(samples_per_message)],
                            stdout=stdout, text=True)


class Scenario:
    """A fresh broker and one job (none for ``broker``: the consumer reads the readings themselves;
    ``plain``: ``bench/plain_consumer.py --follow`` in a process of its own; ``stack``: the serving job on a
    session cluster of several TaskManager JVMs, ``bench.stack_job``); ``stop`` tears both down."""

    def __init__(self, work: Path, name: str, job_kind: str, **job_options) -> None:
        self.broker = EmbeddedBroker(log_path=work / f"{name}-broker.log").start()
        ensure_topics(self.broker.bootstrap, TOPICS)
        create_topics(self.broker.bootstrap, {PASS_TOPIC: 4})
        self.bootstrap = self.broker.bootstrap
        if OTHERS_NICE is not None:
            yield_cpu(self.broker.process.pid, OTHERS_NICE)
        log = work / f"{name}-job.log"
        self.job: JobProcess | None = None
        if job_kind == "serving":
            self.job = serving_job(self.bootstrap, log, state_dir=str(work / f"{name}-ck"), **job_options)
            self.out_topic = TOPICS.predictions
        elif job_kind == "stack":  # the serving job on a session cluster of its own (options: taskmanagers, ...)
            from bench.stack_job import StackJob

            self.job = StackJob(work, name, self.bootstrap, **job_options)
            self.out_topic = TOPICS.predictions
        elif job_kind == "broker":
            self.out_topic = TOPICS.readings
        elif job_kind == "plain":
            self.job = JobProcess("bench.plain_consumer", ["--bootstrap", self.bootstrap, "--follow", "--registry",
                                                           job_options.get("registry", "var/registry"),
                                                           "--stride", str(job_options.get("stride", 8)),
                                                           "--precision", job_options.get("precision", "fp32")], log)
            self.out_topic = TOPICS.predictions
        else:
            self.job = job_process("passthrough", log, bootstrap=self.bootstrap, state_dir=str(work / f"{name}-ck"))
            self.out_topic = PASS_TOPIC
        self.kind = job_kind

    def start_job(self) -> None:
        if self.job is not None:
            self.job.start()

    def job_died(self) -> bool:
        return self.job is not None and not self.job.alive()

    def stop(self) -> None:
        if self.job is not None:
            self.job.stop()
        self.broker.stop()

    def ingest_ms(self, value: bytes) -> float:
        """When the reading behind an output record entered Kafka."""
        record = orjson.loads(value)
        if self.kind in ("serving", "plain", "stack"):
            return record["emitted_at"] - record["latency_ms"]
        ts = record["ts"]  # the replayer's blocks carry a time per sample: the newest was stamped when sent
        return float(ts[-1] if isinstance(ts, list) else ts)

    def broker_cpu_s(self) -> float:
        """CPU seconds the broker process has used so far."""
        return process_cpu_s(self.broker.process.pid)


def wait_first_output(sc: Scenario, tail: TopicTail, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if tail.poll(200):
            return
        if sc.job_died():
            raise RuntimeError("job died:\n" + sc.job.log_tail())
    raise TimeoutError("no output from the job")


def measure_latency(work: Path, kind: str, rate: float, seconds: float, registry: str, tag: str = "",
                    linger_ms: int = DEFAULT_LINGER_MS, samples_per_message: int = 1, **job_options) -> dict:
    options = {"registry": registry, **job_options} if kind in ("serving", "plain") else {}
    sc = Scenario(work, f"lat-{kind}-{int(rate)}{tag}", kind, **options)
    try:
        sc.start_job()
        tail = TopicTail(sc.bootstrap, [sc.out_topic])
        stop = threading.Event()
        warm = threading.Thread(target=replay, kwargs=dict(bootstrap=sc.bootstrap, topic=TOPICS.readings,
                                                           rate=min(rate, 500), stop=stop, n_devices=16,
                                                           device_prefix="warm", linger_ms=linger_ms),
                                daemon=True)
        warm.start()
        wait_first_output(sc, tail)
        time.sleep(3)
        stop.set()
        warm.join()
        while tail.poll(500):
            pass
        measure_from = time.time() * 1000
        broker_cpu_from, measure_started = sc.broker_cpu_s(), time.monotonic()
        sender = start_sender(sc.bootstrap, rate, seconds, linger_ms=linger_ms, samples_per_message=samples_per_message)
        parts = {"broker": [sc.broker.process.pid], "sender": [sender.pid], "harness": [os.getpid()]}
        if sc.job is not None:
            parts["job"] = process_tree(sc.job.process.pid)
        cpu_split: dict = {}

        def split_cpu() -> None:  # past the sender's start-up (~3 s of imports), ending before it does
            time.sleep(5.0)
            cpu = CpuSplit(parts)
            time.sleep(max(1.0, seconds - 6.0))
            cpu_split.update(cpu.stop())

        splitter = threading.Thread(target=split_cpu, daemon=True)
        splitter.start()
        latencies, outputs, in_job = [], 0, []
        quiet_until = None
        while sender.poll() is None or quiet_until is None or time.monotonic() < quiet_until:
            batch = tail.poll(100)
            received = time.time() * 1000
            for record in batch:
                ingest = sc.ingest_ms(record.value)
                if ingest >= measure_from:
                    latencies.append(received - ingest)
                    if sc.kind in ("serving", "plain"):
                        in_job.append(orjson.loads(record.value)["latency_ms"])
                    outputs += 1
            if sender.poll() is not None:
                quiet_until = quiet_until or time.monotonic() + 5.0
                if batch:
                    quiet_until = time.monotonic() + 2.0
        broker_cpu = (sc.broker_cpu_s() - broker_cpu_from) / (time.monotonic() - measure_started)
        splitter.join()
        tail.close()
        sent, secs = re.search(r"sent (\d+) readings in ([\d.]+)s", sender.stdout.read()).groups()
        lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
        return {"kind": kind, "rate": rate, "measured_from_s": measure_from / 1000,
                "sent_per_s": int(sent) / max(float(secs), 1e-9),
                "outputs": outputs, "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "in_job_p50_ms": float(np.percentile(in_job, 50)) if in_job else None,
                "in_job_p99_ms": float(np.percentile(in_job, 99)) if in_job else None,
                "broker_cpu_pct": 100.0 * broker_cpu, "cpu_split_pct": cpu_split}
    finally:
        sc.stop()


def preload(bootstrap: str, count: int, n_devices: int = 64) -> float:
    """Write ``count`` readings as fast as the client allows; returns seconds taken."""
    stats = replay(bootstrap, TOPICS.readings, rate=0, count=count, n_devices=n_devices)
    return stats.seconds


def expected_windows(count: int, n_devices: int, window: int, stride: int) -> int:
    per_device = count // n_devices
    return n_devices * (max(0, (per_device - window) // stride + 1))


def drain(sc: Scenario, expected: int, timeout_s: float = 600.0) -> tuple[int, float]:
    """Start the job on the preloaded backlog; (outputs, seconds from the first output to the last).
    It stops at ``expected`` outputs, or 20 s after the last one."""
    got, seconds, _ = drain_gauged(sc, expected, None, timeout_s)
    return got, seconds


def job_cpu_split(sc: Scenario) -> dict[str, float]:
    """CPU seconds used so far by the serving job (all its processes), its Python operators' task threads
    (summed over subtasks; the per-device layout's ``parse``: parse-and-window, and ``inference``, the sharded
    layout's ``serve``: serve-shards, and ``scoring``, its scoring threads), and the broker (a gauge for
    :func:`drain_gauged`)."""
    pids = process_tree(sc.job.process.pid)
    threads = thread_cpu_s(pids)
    return {"job": processes_cpu_s(pids),
            "parse": sum(v for n, v in threads.items() if n.startswith("parse-and-wind")),
            "inference": sum(v for n, v in threads.items() if n.startswith("inference (")),
            "serve": sum(v for n, v in threads.items() if n.startswith("serve-shards")),
            "scoring": sum(v for n, v in threads.items() if n.startswith(THREAD_NAME)),
            "broker": sc.broker_cpu_s()}


def grown(readings: list[tuple[float, float | dict[str, float]]], first: float, last: float) -> float | dict:
    """How much a gauge read at ``readings`` (wall-clock ms, value or values by name) grew from ``first`` to
    ``last`` (ms), interpolated between readings.

    >>> grown([(0, 0.0), (100, 1.0), (200, 3.0)], 50, 150)
    1.5
    >>> grown([(0, {"a": 0.0}), (100, {"a": 2.0})], 0, 50)
    {'a': 1.0}
    """
    at = [t for t, _ in readings]

    def growth(values: list[float]) -> float:
        return float(np.interp(last, at, values) - np.interp(first, at, values))

    if isinstance(readings[0][1], dict):
        return {k: growth([v[k] for _, v in readings]) for k in readings[0][1]}
    return growth([v for _, v in readings])


def drain_gauged(sc: Scenario, expected: int, gauge, timeout_s: float = 600.0) -> tuple[int, float, float | dict]:
    """:func:`drain`, and how much ``gauge()`` (e.g. the job's CPU seconds, or a dict of such figures) grew
    from the first output to the last (NaN without a gauge). The outputs are counted by
    ``bench/output_count.py`` in a session that yields the CPU to the job and the broker, and timed by their
    Kafka timestamps (when the job's sink produced them); the gauge is read every 100 ms and interpolated at
    those times."""
    sc.start_job()
    counter = subprocess.Popen([sys.executable, str(Path(__file__).with_name("output_count.py")), sc.bootstrap,
                                sc.out_topic, str(expected), "--timeout", str(timeout_s)],
                               stdout=subprocess.PIPE, start_new_session=True)
    if autogroups_enabled():
        yield_cpu(counter.pid, COUNTER_NICE)
    readings: list[tuple[float, float | dict[str, float]]] = []  # (wall-clock ms, gauge)
    try:
        while counter.poll() is None:
            if gauge is not None:
                readings.append((time.time() * 1000.0, gauge()))
            if sc.job_died():
                raise RuntimeError("job died:\n" + sc.job.log_tail())
            time.sleep(0.1)
        report = orjson.loads(counter.stdout.read())
    finally:
        if counter.poll() is None:
            counter.kill()
        counter.wait()
    first, last = report["first_ms"], report["last_ms"]
    seconds = (last - first) / 1000.0 if first is not None and last > first else float("nan")
    grew = grown(readings, first, last) if readings and first is not None else float("nan")
    return report["count"], seconds, grew


def measure_throughput(work: Path, kind: str, count: int, registry: str, stride: int = 8,
                       max_batch: int = 64, stats_file: str = "") -> dict:
    options = {"registry": registry, "stride": stride, "max_batch": max_batch} if kind == "serving" else {}
    if stats_file:
        options["stats_file"] = stats_file
    sc = Scenario(work, f"tput-{kind}-{stride}", kind, **options)
    try:
        n_devices = 64
        preload(sc.bootstrap, count, n_devices)
        expected = expected_windows(count, n_devices, 32, stride) if kind == "serving" else count
        got, seconds = drain(sc, expected)
        # the first output appears once a window is full: readings before it are not timed
        timed = count * (got / expected) - (n_devices * 32 if kind == "serving" else 0)
        result = {"kind": kind, "stride": stride, "readings": count, "outputs": got, "expected": expected,
                  "seconds": seconds, "readings_per_s": timed / seconds,
                  "outputs_per_s": got / seconds}
        return result
    finally:
        sc.stop()


def in_job_model_rate(stats_file: Path, since: float = 0.0) -> dict:
    """The model's own numbers inside the job from the lines the inference operator wrote
    (cumulative, one a second while it scores), counted from the last line before ``since`` (epoch s)."""
    lines = [orjson.loads(line) for line in stats_file.read_text().splitlines()] if stats_file.exists() else []
    if not lines:
        raise RuntimeError(f"the inference operator wrote no stats to {stats_file}")
    before = [line for line in lines if line["at"] < since]
    first, last = (before[-1] if before else {k: 0 for k in lines[-1]}), lines[-1]
    if first is last:
        raise RuntimeError(f"no stats line in {stats_file} after the measured period began")
    d = {k: last[k] - first[k] for k in ("windows", "batches", "model_seconds", "model_cpu_seconds",
                                          "model_runqueue_seconds")}
    return {"mean_batch": d["windows"] / d["batches"], "in_job": d["windows"] / d["model_seconds"],
            "in_job_cpu": d["windows"] / max(d["model_cpu_seconds"], 1e-9),
            "runqueue_share": d["model_runqueue_seconds"] / d["model_seconds"]}


def standalone_onnx(registry: str, batch: int, seconds: float = 2.0, threads: int = 0, repeats: int = 1,
                    precision: str = "fp32") -> float:
    """Windows/s of ONNX Runtime alone at ``batch``: the median of ``repeats`` timed loops."""
    from bench.inference_bench import windows_per_second
    from operators.serving_model import load_from_registry

    model = load_from_registry(registry, "basic-motions", threads=threads, precision=precision)
    x = np.random.default_rng(0).normal(size=(batch, model.spec.window, model.spec.n_channels)).astype(np.float32)
    return float(np.median([windows_per_second(model.runner, x, seconds) for _ in range(repeats)]))


def standalone_onnx_next_to_busy_core(registry: str, batch: int, repeats: int = 3) -> float:
    """``standalone_onnx`` on one CPU while a memory-bound loop runs on another (NaN with one CPU):
    what the other core's work alone costs the model, without any waiting for a CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return float("nan")
    loop = subprocess.Popen([sys.executable, "-c", f"import os, numpy as np\nos.sched_setaffinity(0, {{{cpus[1]}}})\n"
                             "a = np.ones(8_000_000)\nwhile True:\n    a += 1"])
    os.sched_setaffinity(0, {cpus[0]})  # this thread only: ONNX Runtime with one thread computes on it
    try:
        time.sleep(0.5)
        return standalone_onnx(registry, batch, threads=1, repeats=repeats)
    finally:
        os.sched_setaffinity(0, cpus)
        loop.kill()
        loop.wait()


def in_job_cases(work: Path, registry: str, preload_count: int) -> list[dict]:
    """The model's numbers inside the job at stride 1 (one window per reading): at two steady
    rates, batches filled by the batch wait, then on a backlog with the whole pipeline competing."""
    cases = []
    for rate, wait_ms in ((500, 100), (1500, 50)):
        stats = work / f"inference-steady-{rate}.jsonl"
        run = measure_latency(work, "serving", rate, 15, registry, tag=f"-inference-{rate}", stride=1,
                              max_batch=64, max_wait_ms=wait_ms, stats_file=str(stats))
        cases.append((f"steady {rate:,} windows/s, {wait_ms} ms batch wait", stats, run["measured_from_s"],
                      run["cpu_split_pct"]))
    stats = work / "inference-saturated.jsonl"
    measure_throughput(work, "serving", min(preload_count, 40_000), registry, stride=1, max_batch=64,
                       stats_file=str(stats))
    cases.append(("saturated backlog", stats, 0.0, None))
    return [{"case": name, **in_job_model_rate(path, since), "cpu_split_pct": split}
            for name, path, since, split in cases]


def in_job_cases_others_yielding(work: Path, registry: str, preload_count: int) -> list[dict]:
    """``in_job_cases`` run in a new session whose autogroup (this harness: load generator,
    measuring consumer) and every broker's yield the cores to the job's."""
    out = work / "inference-others-yield.json"
    child = subprocess.run([sys.executable, __file__, "--in-job-only", str(out), "--registry", registry,
                            "--preload", str(preload_count), "--work", str(work / "others-yield")],
                           start_new_session=True)
    if child.returncode:
        raise RuntimeError(f"the pass with the other services yielding failed (exit {child.returncode})")
    return orjson.loads(out.read_bytes())


def plot(latency_rows: list[dict], path: Path) -> None:
    series = []
    for kind in ("serving", "passthrough", "broker"):
        rows = [r for r in latency_rows if r["kind"] == kind]
        rates = [r["rate"] for r in rows]
        series += [(f"{kind} p99", rates, [r["p99_ms"] for r in rows], {"marker": "o"}),
                   (f"{kind} p50", rates, [r["p50_ms"] for r in rows], {"marker": "x", "ls": "--"})]
    line_plot(path, series, "input rate (readings/s)", "latency (ms)", "Reading → output latency")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="500,1000,2500,5000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--preload", type=int, default=200_000)
    parser.add_argument("--registry", default="var/registry")
    parser.add_argument("--linger-ms", type=int, default=DEFAULT_LINGER_MS,
                        help="the sender's batching wait (Tansu's fetch cost grows with the batches a topic holds)")
    parser.add_argument("--skip", default="",
                        help="comma list of parts to skip: latency,throughput,inference,yield (the inference "
                             "pass with the other services yielding)")
    parser.add_argument("--in-job-only", metavar="JSON", help=argparse.SUPPRESS)  # the yielding pass's child
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sensorloop-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.in_job_only:
        global OTHERS_NICE
        yield_cpu("self")  # this process leads its own session: the harness and the sender it starts
        OTHERS_NICE = YIELD_NICE
        Path(args.in_job_only).write_bytes(orjson.dumps(in_job_cases(work, args.registry, args.preload)))
        return
    results: dict = {}
    if "throughput" not in skip:
        rows = [measure_throughput(work, "passthrough", args.preload, args.registry),
                measure_throughput(work, "serving", args.preload, args.registry)]
        base = rows[0]["readings_per_s"]
        print_table("Sustained throughput on a backlog (readings/s)",
                    ["job", "readings", "outputs (expected)", "seconds", "readings/s", "vs pass-through"],
                    [[r["kind"], r["readings"], f"{r['outputs']} ({r['expected']})", r["seconds"],
                      r["readings_per_s"], f"{r['readings_per_s'] / base:.3f}"] for r in rows])
        results["throughput"] = rows
    if "latency" not in skip:
        rows = []
        for rate in [float(r) for r in args.rates.split(",")]:
            for kind in ("broker", "passthrough", "serving"):
                rows.append(measure_latency(work, kind, rate, args.seconds, args.registry, linger_ms=args.linger_ms))
                print(rows[-1], flush=True)
        table = []
        for rate in sorted({r["rate"] for r in rows}):
            b, p, s = [next(r for r in rows if r["rate"] == rate and r["kind"] == k)
                       for k in ("broker", "passthrough", "serving")]
            table.append([int(rate), s["sent_per_s"], s["outputs"], s["p50_ms"], s["p99_ms"], p["p50_ms"],
                          p["p99_ms"], b["p50_ms"], b["p99_ms"], f"{s['p99_ms'] / p['p99_ms']:.2f}",
                          f"{b['broker_cpu_pct']:.0f} / {s['broker_cpu_pct']:.0f}"])
        print_table("Reading → prediction latency at fixed input rates (ms)",
                    ["rate", "sent/s", "predictions", "serving p50", "serving p99", "pass-through p50",
                     "pass-through p99", "broker alone p50", "broker alone p99", "p99 serving / pass-through",
                     "broker CPU % (alone / serving)"], table)
        results["latency"] = rows
        try:
            plot(rows, RESULTS / "serving_latency.png")
        except ImportError:
            print("matplotlib not installed: no plot")
    if "inference" not in skip:
        rows = [dict(r, others="same priority") for r in in_job_cases(work, args.registry, args.preload)]
        if "yield" not in skip and autogroups_enabled():
            rows += [dict(r, others=f"yield (nice {YIELD_NICE})")
                     for r in in_job_cases_others_yielding(work, args.registry, args.preload)]
        elif "yield" not in skip:
            print("skipped the pass with the other services yielding: kernel.sched_autogroup_enabled is not 1, "
                  "so nice values would not separate the job from the broker and the load generator")
        for row in rows:  # measured now, on an otherwise idle machine, median of three loops
            batch = max(1, round(row["mean_batch"]))
            row["standalone"] = standalone_onnx(args.registry, batch, threads=1, repeats=3)
            row["standalone_busy_core"] = standalone_onnx_next_to_busy_core(args.registry, batch)
        print_table("Model throughput inside the job vs standalone ONNX Runtime at the same batch size "
                    "(windows/s, 1 intra-op thread in both; the job's numbers from its measured period)",
                    ["case", "broker, load generator, consumer", "mean batch", "in job", "standalone", "ratio",
                     "in job per CPU-second", "CPU ratio", "model call waiting for a CPU",
                     "standalone, other core memory-bound", "its ratio to standalone"],
                    [[r["case"], r["others"], f"{r['mean_batch']:.1f}", r["in_job"], r["standalone"],
                      f"{r['in_job'] / r['standalone']:.3f}", r["in_job_cpu"],
                      f"{r['in_job_cpu'] / r['standalone']:.3f}", f"{100 * r['runqueue_share']:.0f} %",
                      r["standalone_busy_core"], f"{r['standalone_busy_core'] / r['standalone']:.3f}"]
                     for r in rows])
        steady = [r for r in rows if r["cpu_split_pct"]]
        print_table("Where the CPU went in the steady cases (% of one core, sampled while the sender sent)",
                    ["case", "broker, load generator, consumer", "broker", "load generator", "measuring consumer",
                     "job", "job's busiest threads"],
                    [[r["case"], r["others"], *(f"{r['cpu_split_pct'][k]:.0f}" for k in
                                                ("broker", "sender", "harness", "job")),
                      ", ".join(f"{n} {v:.0f}" for n, v in r["cpu_split_pct"]["job_threads"].items())]
                     for r in steady])
        results["inference_in_job"] = rows
    print(f"results: {save('serving', results)}")


if __name__ == "__main__":
    main()
