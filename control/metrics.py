"""Read the jobs' Flink metrics from Prometheus reporter endpoints and sum them per job.

The jobs register their metrics on Flink operators (``readings_in``, ``predictions``, ``review_requests``,
``dead_letters``, ``batch_size``, ``inference_ms``, ``model_version``, ``prequential_accuracy_pct``,
``drift_events``, ...); Flink's Prometheus reporter exposes them as
``flink_taskmanager_job_task_operator_<name>{job_name=...}``.

>>> text = 'flink_taskmanager_job_task_operator_predictions{job_name="sensorloop_serving",subtask_index="0",} 7.0\\n'
>>> summarize(parse_prometheus(text))
{'sensorloop-serving': {'predictions': 7.0}}
"""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

OPERATOR_PREFIX = "flink_taskmanager_job_task_operator_"
GAUGES = {"batch_size", "inference_ms", "model_version", "prequential_accuracy_pct", "label_lag_ms",
          "model_versions_unusable", "source_resets", "source_stalled_partitions"}  # max over subtasks
SERVING = ("readings_in", "groups_in", "samples_in", "windows", "late_readings", "dead_letters", "predictions",
           "review_requests", "batches", "inference_us_total", "batch_size", "inference_ms", "model_version", "model_swaps",
           "model_refused", "confidence_drifts", "unscored_windows", "devices_expired", "devices_orphaned",
           "model_versions_unusable", "source_resets", "source_stalled_partitions", "reviews_over_share",
           "anomalies", "forecasts", "unlabeled_windows")
LEARNING = ("labeled_windows", "labeled_windows_learned", "unlabeled_windows_in", "unlabeled_windows_learned",
            "unlabeled_windows_set_aside",
            "versions_published", "candidates_refused",
            "drift_events", "rollbacks", "candidates_deferred", "prequential_accuracy_pct", "model_version", "label_lag_ms", "dead_letters")
OURS = set(SERVING) | set(LEARNING)
_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    """Samples from Prometheus text exposition format (comments skipped)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        samples.append(Sample(match.group(1), dict(_LABEL.findall(match.group(2) or "")), value))
    return samples


def summarize(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Our operator metrics per job name (``sensorloop-serving``): counters summed, gauges' maximum."""
    jobs: dict[str, dict[str, float]] = {}
    for s in samples:
        if not s.name.startswith(OPERATOR_PREFIX):
            continue
        metric = s.name[len(OPERATOR_PREFIX):]
        if metric not in OURS or s.value != s.value:  # NaN
            continue
        if "model" in s.labels and metric.startswith("model_"):
            continue  # one model's share (summarize_models); the job's own gauge holds the total
        _add(jobs.setdefault(_job(s), {}), metric, s.value)
    return jobs


def _job(sample: Sample) -> str:
    return sample.labels.get("job_name", "?").replace("_", "-")


def _add(values: dict[str, float], metric: str, value: float) -> None:
    """One subtask's sample into a job's figures: counters summed, gauges' maximum."""
    if metric in GAUGES:
        values[metric] = max(values.get(metric, value), value)
    else:
        values[metric] = values.get(metric, 0.0) + value


def summarize_models(samples: list[Sample]) -> dict[str, dict[str, dict[str, float]]]:
    """Per job and model, the metrics the jobs register in a ``model`` group when they serve several
    models (``..._operator_model_<metric>{model="<name>"}``): counters summed, gauges' maximum.

    >>> text = ('flink_taskmanager_job_task_operator_model_predictions{job_name="sensorloop_serving",'
    ...         'model="gait",subtask_index="0",} 3.0\\n')
    >>> summarize_models(parse_prometheus(text))
    {'sensorloop-serving': {'gait': {'predictions': 3.0}}}
    """
    jobs: dict[str, dict[str, dict[str, float]]] = {}
    for s in samples:
        if not s.name.startswith(OPERATOR_PREFIX + "model_") or "model" not in s.labels or s.value != s.value:
            continue
        metric = s.name[len(OPERATOR_PREFIX + "model_"):]
        if metric not in OURS:
            continue
        _add(jobs.setdefault(_job(s), {}).setdefault(s.labels["model"], {}), metric, s.value)
    return jobs


def endpoints(ports: str, host: str = "localhost") -> list[str]:
    """``9249-9251`` → the /metrics URLs of that port range.

    >>> endpoints("9249-9250")
    ['http://localhost:9249/metrics', 'http://localhost:9250/metrics']
    """
    low, _, high = ports.partition("-")
    return [f"http://{host}:{port}/metrics" for port in range(int(low), int(high or low) + 1)]


DNS_PREFIX = "dns+"  # dns+http://taskmanager:9249/metrics: every address the name resolves to


def expand(urls: list[str]) -> list[str]:
    """Each ``dns+`` URL as one URL per IPv4 address its host name resolves to (a compose service's replicas,
    a Kubernetes headless service's pods: every TaskManager); other URLs as they are. A name that does not
    resolve stays, without the prefix, as one URL that will not answer.

    >>> expand(["dns+http://localhost:9249/metrics", "http://jobmanager:9249/metrics"])
    ['http://127.0.0.1:9249/metrics', 'http://jobmanager:9249/metrics']
    """
    out = []
    for url in urls:
        if not url.startswith(DNS_PREFIX):
            out.append(url)
            continue
        parts = urllib.parse.urlsplit(url.removeprefix(DNS_PREFIX))
        try:
            found = socket.getaddrinfo(parts.hostname, parts.port, socket.AF_INET, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            out.append(parts.geturl())
            continue
        port = f":{parts.port}" if parts.port else ""
        out += [parts._replace(netloc=f"{address}{port}").geturl()
                for address in sorted({info[4][0] for info in found})]
    return out


def scrape(urls: list[str], timeout_s: float = 2.0) -> tuple[list[Sample], list[str]]:
    """Samples from every URL that answers (``dns+`` URLs expanded first), and the URLs that did."""
    samples, answered = [], []
    for url in expand(urls):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                samples += parse_prometheus(response.read().decode(errors="replace"))
            answered.append(url)
        except (urllib.error.URLError, OSError):
            continue
    return samples, answered


def job_metrics(urls: list[str]) -> dict[str, dict[str, float]]:
    return summarize(scrape(urls)[0])


def job_and_model_metrics(urls: list[str]) -> tuple[dict[str, dict[str, float]],
                                                    dict[str, dict[str, dict[str, float]]]]:
    """``job_metrics`` and ``summarize_models`` from one scrape."""
    samples = scrape(urls)[0]
    return summarize(samples), summarize_models(samples)
