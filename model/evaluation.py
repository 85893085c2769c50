"""Per-class precision and recall and the confusion matrix of a classifier on held-out windows.

>>> report = class_report([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
>>> report["accuracy"], report["per_class"]["b"]
(0.75, {'precision': 0.667, 'recall': 1.0, 'support': 2})
>>> print(format_report(report))
accuracy 0.750 on 4 windows
class  precision  recall  support
a          1.000   0.500        2
b          0.667   1.000        2
confusion (rows: true, columns: predicted)
       a  b
a      1  1
b      0  2
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def class_report(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    true, pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    n = len(classes)
    confusion = np.zeros((n, n), int)
    np.add.at(confusion, (true, pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        predicted, actual = confusion[:, i].sum(), confusion[i].sum()
        per_class[name] = {"precision": round(float(confusion[i, i] / predicted), 3) if predicted else 0.0,
                           "recall": round(float(confusion[i, i] / actual), 3) if actual else 0.0,
                           "support": int(actual)}
    accuracy = float((true == pred).mean()) if len(true) else float("nan")
    return {"accuracy": accuracy, "windows": int(len(true)), "per_class": per_class,
            "confusion": confusion.tolist(), "classes": list(classes)}


def format_report(report: dict) -> str:
    classes = report["classes"]
    width = max(5, *(len(c) for c in classes))
    lines = [f"accuracy {report['accuracy']:.3f} on {report['windows']} windows",
             f"{'class':<{width}}  precision  recall  support"]
    for name in classes:
        c = report["per_class"][name]
        lines.append(f"{name:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['support']:7d}")
    lines.append("confusion (rows: true, columns: predicted)")
    cell = max(2, *(len(c) for c in classes), *(len(str(v)) for row in report["confusion"] for v in row))
    lines.append(" " * width + " " + " ".join(f"{c:>{cell}}" for c in classes))
    for name, row in zip(classes, report["confusion"]):
        lines.append(f"{name:<{width}} " + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
