"""A user's own recordings: import checks at every door, all-or-nothing, flat memory, and a first
model trained on a second real dataset (PickupGestureWiimoteZ: a Wiimote's accelerometer, 10 gestures)."""

from __future__ import annotations

import csv
import tracemalloc

import numpy as np
import pytest

from recordings.importer import import_files
from recordings.store import DatasetStore
from settings.models import ModelDeclaration

MODEL = ModelDeclaration.from_table("imu", {"channels": ["ax", "ay"], "classes": ["walk", "sit"],
                                            "sample_rate_hz": 50, "window": 8, "stride": 4})
HEADER = ["timestamp", "device", "ax", "ay", "label"]


def write_csv(path, rows, header=HEADER):
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def good_rows(n: int, device: str = "d1", start_ms: int = 0):
    return [[start_ms + 20 * i, device, f"{np.sin(i / 5):.4f}", f"{np.cos(i / 5):.4f}", "walk" if i < n // 2 else "sit"]
            for i in range(n)]


def test_a_good_file_is_imported_whole(tmp_path):
    store = DatasetStore(str(tmp_path / "data"))
    path = write_csv(tmp_path / "a.csv", good_rows(100) + good_rows(60, "d2", 10_000))
    report = import_files([path], MODEL, store, "ok")
    assert report.imported and report.rows_imported == 160, report.summary()
    data = store.load("ok")
    assert set(data.devices) == {"d1", "d2"} and data.devices["d2"].values.shape == (60, 2)
    assert data.manifest["samples_per_class"] == {"walk": 80, "sit": 80}
    again = import_files([path], MODEL, DatasetStore(str(tmp_path / "other")), "ok")
    assert again.manifest["fingerprint"] == report.manifest["fingerprint"]  # the same data, the same fingerprint


@pytest.mark.parametrize("case, rows, header, expected", [
    ("missing column", [[0, "d", "1"]], ["timestamp", "device", "ax"], "missing channel column(s) ay"),
    ("extra column", [[0, "d", 1, 2, 3, "walk"]], ["timestamp", "device", "ax", "ay", "az", "label"],
     "column(s) az are not channels"),
    ("no device", [[0, 1, 2, "walk"]], ["timestamp", "ax", "ay", "label"], "no device column"),
    ("text in a number", [[0, "d", "1", "abc", "walk"]], HEADER, "ay: 'abc' is not a number"),
    ("NaN", [[0, "d", "nan", "1", "walk"]], HEADER, "ax is NaN or infinite"),
    ("unknown label", [[0, "d", "1", "2", "jog"]], HEADER, "label 'jog' is not one of ['walk', 'sit']"),
    ("time backwards", [[40, "d", "1", "2", "walk"], [20, "d", "1", "2", "walk"]], HEADER,
     "timestamp not after the device's previous sample"),
    ("bad time", [["yesterday", "d", "1", "2", "walk"]], HEADER, "'yesterday' is neither a number nor"),
    ("short row", [[0, "d", "1"]], HEADER, "wrong number of columns"),
])
def test_each_kind_of_bad_row_stops_the_import_with_its_reason(tmp_path, case, rows, header, expected):
    store = DatasetStore(str(tmp_path / "data"))
    path = write_csv(tmp_path / "bad.csv", good_rows(20) + [[r[0] + 10_000 if isinstance(r[0], int) else r[0],
                                                               *r[1:]] for r in rows], header) \
        if header == HEADER else write_csv(tmp_path / "bad.csv", rows, header)
    report = import_files([path], MODEL, store, "bad")
    assert not report.imported and expected in report.summary(), report.summary()
    assert store.list() == [] and list((tmp_path / "data").iterdir()) == []  # nothing half-imported


def test_a_wrong_sample_rate_is_named(tmp_path):
    rows = [[15 * i, "d", "1", "2", "walk"] for i in range(50)]  # 66.7 Hz, declared 50
    report = import_files([write_csv(tmp_path / "r.csv", rows)], MODEL, DatasetStore(str(tmp_path / "d")), "r")
    assert not report.imported and "samples are 15 ms apart (66.7 Hz); models.imu.sample_rate_hz is 50" in report.summary()


def test_skip_bad_rows_imports_the_rest_and_lists_what_it_refused(tmp_path):
    rows = good_rows(40) + [[900, "d1", "x", "1", "walk"]]
    report = import_files([write_csv(tmp_path / "r.csv", rows)], MODEL, DatasetStore(str(tmp_path / "d")), "r",
                          skip_bad_rows=True)
    assert report.imported and report.rows_imported == 40 and report.refused == {"ax is not a number": 1}


def test_npz_and_parquet_carry_the_same_checks(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (parquet extra) is not installed")
    import pyarrow as pa

    store = DatasetStore(str(tmp_path / "d"))
    series = np.random.default_rng(0).normal(size=(3, 30, 2)).astype(np.float32)
    np.savez(tmp_path / "r.npz", series=series, labels=np.array(["walk", "sit", "walk"]),
             devices=np.array(["a", "a", "b"]), channels=np.array(["ax", "ay"]))
    report = import_files([str(tmp_path / "r.npz")], MODEL, store, "npz")
    assert report.imported and report.rows_imported == 90 and set(store.load("npz").devices) == {"a", "b"}
    table = pa.table({"timestamp": [0, 20, 40], "device": ["p"] * 3, "ax": [1.0, 2.0, float("nan")],
                      "ay": [0.0, 0.0, 0.0], "label": ["sit"] * 3})
    pq.write_table(table, tmp_path / "r.parquet")
    refused = import_files([str(tmp_path / "r.parquet")], MODEL, store, "pq")
    assert not refused.imported and "r.parquet row 3: ax: nan" in refused.summary()


def test_import_streams_so_memory_stays_flat_as_the_file_grows(tmp_path):
    def peak_bytes(n_rows: int) -> int:
        path = write_csv(tmp_path / f"big-{n_rows}.csv", good_rows(n_rows))
        tracemalloc.start()
        report = import_files([path], MODEL, DatasetStore(str(tmp_path / f"d-{n_rows}")), "big", chunk_rows=1024)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert report.imported and report.rows_imported == n_rows
        return peak

    small, large = peak_bytes(5_000), peak_bytes(40_000)
    assert large < 1.5 * small, (small, large)  # 8x the rows, not 8x the memory


def test_a_first_model_from_a_second_real_dataset(tmp_path):
    """PickupGestureWiimoteZ (a Wiimote's z accelerometer, 10 gestures) written as CSV, imported, trained,
    reported per class and published with the dataset's fingerprint."""
    from model.dataset_training import train_from_dataset
    from model.evaluation import format_report
    from model.registry import ModelRegistry

    model, path = wiimote_csv(tmp_path)
    store = DatasetStore(str(tmp_path / "data"))
    report = import_files([path], model, store, "wiimote")
    assert report.imported, report.summary()
    registry = ModelRegistry(str(tmp_path / "registry"))
    result = train_from_dataset(registry, model.spec_dict(), model.stride, store.load("wiimote"), epochs=15)
    text = format_report(result.report)
    assert "split by device" in result.split and "confusion" in text
    chance = 1 / len(model.classes)
    assert result.report["accuracy"] > 2 * chance, text  # well above chance on devices it never saw
    meta = registry.metadata("wiimote", 1)
    assert report.manifest["fingerprint"] in meta.note and meta.spec["channels"] == ["acc_z"]
    assert "augmented" not in meta.note

    augmented = train_from_dataset(registry, model.spec_dict(), model.stride, store.load("wiimote"), epochs=15,
                                   augment_copies=2)  # `sensorloop train --augment 2`
    assert augmented.split == result.split and augmented.report["accuracy"] > 2 * chance
    assert "2 augmented copies of each window per epoch" in registry.metadata("wiimote", 2).note


def wiimote_csv(tmp_path):
    """The real recordings as the CSV a user would export: 10 devices (recordings split among them),
    one row per sample at a declared 100 Hz."""
    from aeon.datasets import load_classification

    X, y = load_classification("PickupGestureWiimoteZ")
    classes = sorted({str(v) for v in y}, key=int)
    model = ModelDeclaration.from_table("wiimote", {"channels": ["acc_z"], "classes": classes, "sample_rate_hz": 100,
                                                    "window": 32, "stride": 8, "d_model": 32, "d_ff": 64})
    rows, clock = [], {}
    for i, (series, label) in enumerate(zip(X, y)):
        device = f"wii-{i % 10}"
        start = clock.get(device, 0)
        for k, value in enumerate(np.asarray(series)[0]):
            rows.append([start + 10 * k, device, f"{float(value):.5f}", str(label)])
        clock[device] = start + 10 * len(series[0]) + 1000  # a second's pause between recordings
    return model, write_csv(tmp_path / "wiimote.csv", rows, ["timestamp", "device", "acc_z", "label"])
