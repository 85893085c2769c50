"""Import a user's recordings (CSV, Parquet, NumPy ``.npz``) for a declared model: every row checked
against the model's channels, classes and sample rate, streamed into a ``DatasetStore`` chunk by chunk.

The CSV layout is the one embedded-ML tools export, one row per sample:
``timestamp, device, <one column per channel>, label`` (``device`` may be given with ``device=``
instead; ``label`` may be absent or empty: unlabeled samples). A timestamp is an integer (ms, or the
``time_unit`` given), a decimal number of seconds, or an ISO 8601 date-time (UTC when it names no zone).

Nothing is half-imported: any refused row, unknown label or wrong sample rate stops the import with
a report of everything found, and no dataset appears (``skip_bad_rows=True`` imports the good rows
and lists the refused ones; structural problems still stop it).

>>> import tempfile, os
>>> from settings.models import ModelDeclaration
>>> model = ModelDeclaration.from_table("m", {"channels": ["x"], "classes": ["a", "b"], "sample_rate_hz": 10,
...                                           "window": 4, "stride": 2})
>>> folder = tempfile.mkdtemp(); path = os.path.join(folder, "r.csv")
>>> _ = open(path, "w").write("timestamp,device,x,label\\n0,d1,1.5,a\\n100,d1,oops,a\\n200,d1,2.5,zz\\n")
>>> report = import_files([path], model, DatasetStore(os.path.join(folder, "data")), "first")
>>> print(report.summary())
import of first refused: nothing imported
  3 rows read, 0 imported
  1 row(s): x is not a number, e.g. r.csv line 3: x: 'oops' is not a number
  1 row(s): label not among models.m.classes, e.g. r.csv line 4: label 'zz' is not one of ['a', 'b']
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from recordings.store import UNLABELED, DatasetStore, DatasetWriter
from settings.models import ModelDeclaration

TIME_COLUMNS = ("timestamp", "ts", "time")
DEVICE_COLUMNS = ("device", "device_id")
UNITS_MS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "ns": 1e-6}
RATE_TOLERANCE = 0.1  # a device's median sample interval may differ this much from the declared rate
INTERVALS_KEPT = 2_000  # per device (the first ones), for the sample-rate check


class ImportAborted(Exception):
    """A structural problem: nothing can be imported from these files."""


@dataclass
class ImportReport:
    dataset_id: str
    rows_read: int = 0
    rows_imported: int = 0
    refused: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # structural: the import stopped
    manifest: dict | None = None

    @property
    def imported(self) -> bool:
        return self.manifest is not None

    def refuse(self, reason: str, where: str, detail: str) -> None:
        self.refused[reason] += 1
        self.examples.setdefault(reason, f"{where}: {detail}")

    def summary(self) -> str:
        head = (f"imported dataset {self.dataset_id}" if self.imported
                else f"import of {self.dataset_id} refused: nothing imported")
        lines = [head, f"  {self.rows_read} rows read, {self.rows_imported} imported"]
        lines += [f"  {problem}" for problem in self.problems]
        lines += [f"  {n} row(s): {reason}, e.g. {self.examples[reason]}" for reason, n in self.refused.items()]
        if self.manifest:
            m = self.manifest
            lines.append(f"  {len(m['devices'])} device(s); samples per class: "
                         + ", ".join(f"{c} {n}" for c, n in m["samples_per_class"].items()))
            lines.append(f"  fingerprint sha256:{m['fingerprint']}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"rows_read": self.rows_read, "rows_imported": self.rows_imported, "refused": dict(self.refused),
                "examples": self.examples, "problems": self.problems}


def parse_time(text: str, unit_ms: float | None) -> int:
    """A timestamp in ms: an integer in ``unit_ms`` (default ms), decimal seconds, or ISO 8601.

    >>> parse_time("1700000000123", None), parse_time("1.5", None), parse_time("1970-01-01 00:00:01.015", None)
    (1700000000123, 1500, 1015)
    """
    text = text.strip()
    try:
        number = int(text)
        return int(round(number * (unit_ms or 1.0)))
    except ValueError:
        pass
    try:
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a time")
        return int(round(number * (unit_ms or 1000.0)))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a number nor an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(round(moment.timestamp() * 1000))


Row = tuple[str, str, str, list, str]  # where, device, timestamp text, channel values, label text


@dataclass(frozen=True)
class MalformedRow:
    """A row a reader could not split into fields (the CSV's wrong-width rows)."""

    where: str
    reason: str
    detail: str


class RowIngest:
    """Checks rows one by one and streams the good ones per device into a ``DatasetWriter``."""

    def __init__(self, model: ModelDeclaration, writer: DatasetWriter, report: ImportReport,
                 label_map: dict[str, str], time_unit: str | None, chunk_rows: int = 4096) -> None:
        self.model, self.writer, self.report = model, writer, report
        self.class_index = {c: i for i, c in enumerate(model.classes)}
        self.label_map = label_map
        self.unit_ms = UNITS_MS[time_unit] if time_unit else None
        self.chunk_rows = chunk_rows
        self.buffers: dict[str, tuple[list, list, list]] = {}
        self.last_ts: dict[str, int] = {}
        self.intervals: dict[str, list[int]] = {}

    def refuse(self, row: MalformedRow) -> None:
        self.report.rows_read += 1
        self.report.refuse(row.reason, row.where, row.detail)

    def add(self, where: str, device: str, ts_text: str, values: list[str], label_text: str) -> None:
        self.report.rows_read += 1
        if not device:
            self.report.refuse("no device id", where, "the device column is empty")
            return
        try:
            ts = parse_time(str(ts_text), self.unit_ms)
        except ValueError as exc:
            self.report.refuse("timestamp unreadable", where, str(exc))
            return
        parsed = []
        for channel, text in zip(self.model.channels, values):
            try:
                number = float(text)
            except (TypeError, ValueError):
                self.report.refuse(f"{channel} is not a number", where, f"{channel}: {text!r} is not a number")
                return
            if not math.isfinite(number):
                self.report.refuse(f"{channel} is NaN or infinite", where, f"{channel}: {text!r}")
                return
            parsed.append(number)
        label = self.label_map.get(label_text, label_text) if label_text is not None else ""
        if label and label not in self.class_index:
            self.report.refuse(f"label not among models.{self.model.name}.classes", where,
                               f"label {label!r} is not one of {list(self.model.classes)}")
            return
        previous = self.last_ts.get(device)
        if previous is not None and ts <= previous:
            self.report.refuse("timestamp not after the device's previous sample", where,
                               f"{ts} ms follows {previous} ms on device {device!r}")
            return
        if previous is not None:
            kept = self.intervals.setdefault(device, [])
            if len(kept) < INTERVALS_KEPT:
                kept.append(ts - previous)
        self.last_ts[device] = ts
        buffer = self.buffers.setdefault(device, ([], [], []))
        buffer[0].append(ts)
        buffer[1].append(parsed)
        buffer[2].append(self.class_index[label] if label else UNLABELED)
        self.report.rows_imported += 1
        if len(buffer[0]) >= self.chunk_rows:
            self._flush(device)

    def _flush(self, device: str) -> None:
        ts, values, labels = self.buffers.pop(device, ([], [], []))
        if ts:
            self.writer.append(device, np.asarray(ts), np.asarray(values, np.float32), np.asarray(labels))

    def finish(self) -> None:
        for device in list(self.buffers):
            self._flush(device)
        expected = 1000.0 / self.model.sample_rate_hz
        for device, kept in self.intervals.items():
            gaps = np.asarray(kept)
            usual = gaps[gaps <= 3 * expected]  # intervals within a recording, not between recordings
            median = float(np.median(usual if len(usual) else gaps))
            if abs(median - expected) > RATE_TOLERANCE * expected:
                self.report.problems.append(
                    f"sample rate: device {device!r}'s samples are {median:g} ms apart ({1000 / median:.3g} Hz); "
                    f"models.{self.model.name}.sample_rate_hz is {self.model.sample_rate_hz:g} "
                    f"({expected:g} ms apart)")


def _columns(header: list[str], model: ModelDeclaration, device: str | None, label_column: str,
             ignore: set[str], where: str) -> tuple[int, int | None, list[int], int | None]:
    """Indices of time, device, channel and label columns; ImportAborted on missing or extra ones."""
    names = [h.strip() for h in header]
    problems = []
    time_index = next((names.index(c) for c in TIME_COLUMNS if c in names), None)
    if time_index is None:
        problems.append(f"{where}: no time column (one of {', '.join(TIME_COLUMNS)})")
    device_index = next((names.index(c) for c in DEVICE_COLUMNS if c in names), None)
    if device_index is None and not device:
        problems.append(f"{where}: no device column ({' or '.join(DEVICE_COLUMNS)}); or name the device (--device)")
    missing = [c for c in model.channels if c not in names]
    if missing:
        problems.append(f"{where}: missing channel column(s) {', '.join(missing)} of models.{model.name}")
    label_index = names.index(label_column) if label_column in names else None
    known = set(model.channels) | {names[i] for i in (time_index, device_index, label_index) if i is not None}
    extra = [n for n in names if n not in known and n not in ignore]
    if extra:
        problems.append(f"{where}: column(s) {', '.join(extra)} are not channels of models.{model.name} "
                        "(declare them, or --ignore-columns them)")
    if problems:
        raise ImportAborted("; ".join(problems))
    return time_index, device_index, [names.index(c) for c in model.channels], label_index


def _csv_rows(path: Path, model: ModelDeclaration, device: str | None, label_column: str,
              ignore: set[str]) -> Iterator[Row | MalformedRow]:
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ImportAborted(f"{path.name}: empty file")
        t, d, channels, lab = _columns(header, model, device, label_column, ignore, path.name)
        width = len(header)
        for line, row in enumerate(reader, start=2):
            where = f"{path.name} line {line}"
            if not row:
                continue
            if len(row) != width:
                yield MalformedRow(where, "wrong number of columns", "the row's width differs from the header's")
                continue
            yield (where, row[d].strip() if d is not None else device, row[t], [row[i] for i in channels],
                   row[lab].strip() if lab is not None else "")


def _parquet_rows(path: Path, model: ModelDeclaration, device: str | None, label_column: str,
                  ignore: set[str]) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportAborted(f"{path.name}: Parquet needs pyarrow (pip install 'sensorloop[parquet]')") from None
    parquet = pq.ParquetFile(path)
    t, d, channels, lab = _columns(parquet.schema_arrow.names, model, device, label_column, ignore, path.name)
    row_number = 0
    for batch in parquet.iter_batches(batch_size=8192):
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for k in range(batch.num_rows):
            row_number += 1
            stamp = columns[t][k]
            if isinstance(stamp, datetime):  # Parquet timestamps without a zone are UTC
                stamp = int((stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp() * 1000)
            ts_text = str(stamp)
            yield (f"{path.name} row {row_number}", str(columns[d][k]) if d is not None else device, ts_text,
                   [columns[i][k] for i in channels], "" if lab is None or columns[lab][k] is None
                   else str(columns[lab][k]))


def _npz_rows(path: Path, model: ModelDeclaration, device: str | None,
              label_column: str, ignore: set[str]) -> Iterator[Row]:
    """``values`` [n, C] with ``timestamps`` [n] (ms) and optional ``devices`` / ``labels`` [n]; or
    ``series`` [recordings, T, C] with optional ``labels`` / ``devices`` per recording (samples at the
    declared rate, recordings one after another with a gap). ``channels`` names the last axis."""
    with np.load(path, allow_pickle=False) as data:
        channels = [str(c) for c in data["channels"]] if "channels" in data else list(model.channels)
        missing = [c for c in model.channels if c not in channels]
        if missing:
            raise ImportAborted(f"{path.name}: missing channel(s) {', '.join(missing)} of models.{model.name}")
        extra = [c for c in channels if c not in model.channels and c not in ignore]
        if extra:
            raise ImportAborted(f"{path.name}: channel(s) {', '.join(extra)} are not channels of models.{model.name}")
        order = [channels.index(c) for c in model.channels]
        step = 1000.0 / model.sample_rate_hz
        if "series" in data:
            series = data["series"]
            labels = data["labels"] if "labels" in data else np.full(len(series), "")
            devices = data["devices"] if "devices" in data else np.full(len(series), device or "")
            start = 0.0
            for r in range(len(series)):
                for i in range(series.shape[1]):
                    yield (f"{path.name} recording {r} sample {i}", str(devices[r]),
                           str(int(round(start + i * step))), [series[r, i, j] for j in order], str(labels[r]))
                start += (series.shape[1] + 10) * step  # a gap: the next recording starts afresh
            return
        if "values" not in data or "timestamps" not in data:
            raise ImportAborted(f"{path.name}: expected arrays 'values' and 'timestamps', or 'series'")
        values, stamps = data["values"], data["timestamps"]
        labels = data["labels"] if "labels" in data else np.full(len(values), "")
        devices = data["devices"] if "devices" in data else np.full(len(values), device or "")
        for i in range(len(values)):
            yield (f"{path.name} row {i}", str(devices[i]), str(stamps[i]), [values[i, j] for j in order],
                   str(labels[i]))


READERS = {".csv": _csv_rows, ".parquet": _parquet_rows, ".npz": _npz_rows}


def import_files(paths: Iterable[str], model: ModelDeclaration, store: DatasetStore, dataset_id: str,
                 device: str | None = None, label_column: str = "label", label_map: dict[str, str] | None = None,
                 time_unit: str | None = None, ignore_columns: Iterable[str] = (), skip_bad_rows: bool = False,
                 chunk_rows: int = 4096) -> ImportReport:
    """Import ``paths`` as dataset ``dataset_id``; the report says what was refused and why."""
    report = ImportReport(dataset_id)
    writer = store.writer(dataset_id, model.name, model.channels, model.classes, model.sample_rate_hz)
    ingest = RowIngest(model, writer, report, label_map or {}, time_unit, chunk_rows)
    try:
        for name in paths:
            path = Path(name)
            reader = READERS.get(path.suffix.lower())
            if reader is None:
                raise ImportAborted(f"{path.name}: unknown format (expected {', '.join(READERS)})")
            if not path.is_file():
                raise ImportAborted(f"{path}: no such file")
            for row in reader(path, model, device, label_column, set(ignore_columns)):
                if isinstance(row, MalformedRow):
                    ingest.refuse(row)
                else:
                    ingest.add(*row)
        ingest.finish()
    except ImportAborted as exc:
        report.problems.append(str(exc))
    if report.rows_imported == 0 and not report.problems:
        report.problems.append("no rows to import")
    if report.problems or (report.refused and not skip_bad_rows):
        writer.abort()
        report.rows_imported = 0
        return report
    report.manifest = writer.commit(report.to_dict())
    return report
