"""Helpers shared by the benchmarks: table printing and result files."""

from __future__ import annotations

import json
import platform
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def wiimote_by_device(first_devices: int, window: int = 32, stride: int = 8, with_devices: bool = False):
    """PickupGestureWiimoteZ (one accelerometer channel, ten gestures) cut into windows, split by device:
    the recordings of devices ``0 .. first_devices - 1`` and those of the rest, as
    ``(classes, (X, labels), (X, labels))`` (``with_devices``: ``(X, labels, devices)``, each window's
    device number). The k-th recording of each gesture is device k % 10, so every device made every
    gesture."""
    import numpy as np
    from aeon.datasets import load_classification

    series, labels = load_classification("PickupGestureWiimoteZ")
    classes = tuple(sorted({str(v) for v in labels}, key=int))
    first, rest = ([], [], []), ([], [], [])
    seen: dict[str, int] = {}
    for s, label in zip(series, labels):
        k = seen[str(label)] = seen.get(str(label), -1) + 1
        values = np.asarray(s, np.float32)[0]
        side = first if k % 10 < first_devices else rest
        for start in range(0, len(values) - window + 1, stride):
            side[0].append(values[start:start + window, None])
            side[1].append(str(label))
            side[2].append(k % 10)
    parts = 3 if with_devices else 2
    return (classes, (np.stack(first[0]), *map(np.asarray, first[1:parts])),
            (np.stack(rest[0]), *map(np.asarray, rest[1:parts])))


def print_table(title: str, header: list[str], rows: list[list]) -> str:
    """Print (and return) a Markdown table; floats get one decimal, or two below 10 (ratios, cores).

    >>> _ = print_table("t", ["a", "b", "c"], [[0.678, 19002.78, "x"]])
    ### t
    <BLANKLINE>
    | a | b | c |
    |---|---|---|
    | 0.68 | 19,002.8 | x |
    <BLANKLINE>
    """
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text + "\n", flush=True)
    return text


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": f"{platform.machine()} {platform.node()}", **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def line_plot(path: Path, series: list[tuple[str, list, list, dict]], xlabel: str, ylabel: str, title: str,
              log2_x: bool = False) -> None:
    """Write a small line chart: ``series`` holds (label, xs, ys, matplotlib style) tuples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, xs, ys, style in series:
        ax.plot(xs, ys, label=label, **style)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
