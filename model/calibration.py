"""Calibrated confidence: one temperature per version, fitted on held-out labeled windows, so that
"confidence 0.9" means right about nine times in ten and the review threshold asks about the
windows that are really in doubt.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> labels = rng.integers(0, 3, 2000)
>>> logits = rng.normal(0, 1, (2000, 3)); logits[np.arange(2000), labels] += 1.0
>>> overconfident = logits * 4                      # right as often, far surer of itself
>>> t = fit_temperature(overconfident, labels)
>>> 3.0 < t < 5.5
True
>>> ece(softmax(overconfident), labels) > 0.15 > ece(softmax(overconfident / t), labels)
True

On few windows the ECE of even a perfectly calibrated model is well above 0 (each bin's accuracy is
estimated from few windows). :func:`ece_noise` says how high it goes by chance, so a version's ECE can
be read against it:

>>> calibrated = softmax(overconfident / t)
>>> round(ece_noise(calibrated[:2000]), 3) < round(ece_noise(calibrated[:100]), 3)
True
"""

from __future__ import annotations

import numpy as np

BINS = 10
MIN_WINDOWS = 20  # held-out windows below which a version keeps temperature 1 (too few to fit one)
BIAS_L2 = 0.01  # pull of the per-class biases towards 0 (learning.calibration = "temperature_bias")
BIAS_MIN_PER_CLASS = 10  # held-out windows per class below which "auto" keeps the temperature alone


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood (a grid over log T,
    then a finer one around the best); 1.0 with fewer than two windows."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, int)
    if len(labels) < 2:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    best = grid[int(np.argmin([nll(logits, labels, t) for t in grid]))]
    fine = best * np.exp(np.linspace(-0.1, 0.1, 21))
    return float(fine[int(np.argmin([nll(logits, labels, t) for t in fine]))])


def fit_temperature_bias(logits: np.ndarray, labels: np.ndarray, l2: float = BIAS_L2) -> tuple[float, np.ndarray]:
    """A temperature and one bias per class (bias-corrected temperature scaling) minimising the negative
    log-likelihood of ``logits / T + bias``, the biases pulled towards 0 by ``l2`` (a class with few
    held-out windows keeps a small one); (1.0, zeros) with fewer than two windows."""
    import torch

    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, int)
    if len(labels) < 2:
        return 1.0, np.zeros(logits.shape[1])
    z, target = torch.as_tensor(logits), torch.as_tensor(labels)
    log_t = torch.tensor(float(np.log(fit_temperature(logits, labels))), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(logits.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, bias], max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(z / log_t.exp() + bias, target) + l2 * (bias ** 2).sum()
        value.backward()
        return value

    opt.step(loss)
    t = float(np.clip(np.exp(log_t.item()), 0.05, 20.0))
    b = bias.detach().numpy()
    return t, b - b.mean()  # only differences between classes matter to a softmax


def class_bias_of(metrics: dict, n_classes: int) -> np.ndarray | None:
    """The per-class calibration biases a version's metrics hold (``calibration_bias_<i>``), or None."""
    if "calibration_bias_0" not in metrics:
        return None
    return np.asarray([metrics.get(f"calibration_bias_{i}", 0.0) for i in range(n_classes)], np.float32)


def decision_shift(metrics: dict, n_classes: int) -> np.ndarray | None:
    """What a version's per-class biases do to the class it predicts, in the units of its raw logits:
    ``temperature * bias`` (``argmax(logits / T + b) == argmax(logits + T * b)``); None without biases.

    >>> decision_shift({"temperature": 2.0, "calibration_bias_0": 0.5, "calibration_bias_1": -0.5}, 2).tolist()
    [1.0, -1.0]
    """
    bias = class_bias_of(metrics, n_classes)
    return None if bias is None else float(metrics.get("temperature", 1.0)) * bias.astype(np.float64)


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the window-weighted gap between confidence and accuracy over
    ``bins`` equal-width confidence bins."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels, int)
    if len(labels) == 0:
        return float("nan")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(labels))


def ece_noise(probabilities: np.ndarray, quantile: float = 0.95, draws: int = 400, seed: int = 0,
              bins: int = BINS) -> float:
    """How high the ECE of a perfectly calibrated model with these confidences reaches by chance on this
    many windows: the ``quantile`` of the ECE over ``draws`` simulations in which each window's top class
    is right with exactly its confidence. An ECE at or under it cannot be told from perfect calibration
    on these windows."""
    probabilities = np.asarray(probabilities, np.float64)
    if len(probabilities) == 0:
        return float("nan")
    confidence = probabilities.max(axis=1)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    mean_confidence = np.bincount(which, confidence, minlength=bins) / np.maximum(counts, 1)
    right = np.random.default_rng(seed).random((draws, len(confidence))) < confidence
    hits = np.stack([np.bincount(which, r, minlength=bins) for r in right])  # [draws, bins]
    gaps = np.abs(hits / np.maximum(counts, 1) - mean_confidence) * counts
    return float(np.quantile(gaps.sum(axis=1) / len(confidence), quantile))


def cross_fitted(logits: np.ndarray, labels: np.ndarray, bias: bool = False) -> np.ndarray:
    """``logits`` calibrated out of fold: alternate windows form two halves, and each half is scaled by the
    temperature (with ``bias``, and the per-class biases) fitted on the other half's ``labels``, so no window
    is scored with a calibration fitted on it.

    >>> rng = np.random.default_rng(1)
    >>> labels = rng.integers(0, 2, 400)
    >>> logits = np.stack([np.full(400, 1.5), np.zeros(400)], 1); logits[np.arange(400), labels] += 1.0
    >>> float((logits.argmax(1) == labels).mean())             # favours class 0 by more than its signal
    0.4875
    >>> float((cross_fitted(logits, labels, bias=True).argmax(1) == labels).mean())
    1.0
    """
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, int)
    halves = [np.arange(len(labels)) % 2 == k for k in (0, 1)]
    scaled = np.empty_like(logits)
    for fit_on, score_on in (halves, halves[::-1]):
        if bias:
            t, b = fit_temperature_bias(logits[fit_on], labels[fit_on])
            scaled[score_on] = logits[score_on] / t + b
        else:
            scaled[score_on] = logits[score_on] / fit_temperature(logits[fit_on], labels[fit_on])
    return scaled


MODES = ("temperature", "temperature_bias", "auto")


def out_of_fold(mode: str, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, bool]:
    """``logits`` calibrated out of fold (:func:`cross_fitted`) the way ``mode`` (``learning.calibration``)
    calibrates a version on these held-out windows, and whether that calibration has per-class biases:
    never (``"temperature"``), always (``"temperature_bias"``), or (``"auto"``) where :func:`biases_help`.
    The gate judges a candidate by these, and :func:`calibrate` reports their ECE."""
    if mode not in MODES:
        raise ValueError(f"calibration must be one of {MODES}, got {mode!r}")
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, int)
    if mode == "temperature_bias":
        return cross_fitted(logits, labels, bias=True), True
    plain = cross_fitted(logits, labels, bias=False)
    if mode == "temperature" or len(labels) < BIAS_MIN_PER_CLASS * logits.shape[1]:
        return plain, False
    left = ece(softmax(plain), labels)
    if left <= ece_noise(softmax(plain)):
        return plain, False
    biased = cross_fitted(logits, labels, bias=True)
    if _significantly_fewer_right(biased, logits, labels) or ece(softmax(biased), labels) >= left:
        return plain, False
    return biased, True


def biases_help(logits: np.ndarray, labels: np.ndarray) -> bool:
    """Whether per-class biases are worth fitting beside the temperature: the temperature alone leaves an
    expected calibration error *out of fold* above what chance gives a perfectly calibrated model on as
    many windows (:func:`ece_noise`), and the biases, cross-fitted on the same two halves, lower it without
    getting significantly fewer windows right (a bias can change the class); with at least
    ``BIAS_MIN_PER_CLASS`` windows per class to fit them on. (The log-loss barely tells the two apart: the
    biases move it by under 1 % on the Wiimote people of ``bench/calibration_bench.py``, where they halve
    the ECE.)

    >>> rng = np.random.default_rng(2)
    >>> labels = rng.integers(0, 3, 600)
    >>> logits = rng.normal(0, 1, (600, 3)); logits[np.arange(600), labels] += 2.0
    >>> biases_help(logits, labels)                                 # a temperature is all it needs
    False
    >>> biases_help(logits + np.array([3.0, 0.0, 0.0]), labels)     # favours class 0
    True
    >>> biases_help(logits[:25] + np.array([3.0, 0.0, 0.0]), labels[:25])   # too few windows per class
    False
    """
    return out_of_fold("auto", logits, labels)[1]


def _significantly_fewer_right(logits: np.ndarray, than: np.ndarray, labels: np.ndarray, z: float = 1.96) -> bool:
    """Whether ``logits`` get significantly fewer windows right than ``than`` (McNemar's test on the windows
    where exactly one of them is right, normal approximation, two-sided 5 %)."""
    right, right_than = logits.argmax(1) == labels, than.argmax(1) == labels
    lost, won = int((right_than & ~right).sum()), int((right & ~right_than).sum())
    return lost - won > z * np.sqrt(max(lost + won, 1))


def calibrate(logits: np.ndarray, labels: np.ndarray, mode: str = "temperature") -> dict[str, float]:
    """The temperature (and, where ``mode`` gives them, one bias per class: ``calibration_bias_<i>``;
    :func:`out_of_fold`) fitted on all the windows, and the ECE before and after it measured by
    cross-fitting (each half scored with the calibration fitted on the other half), so the "after" figure
    is not scored on the windows it was fitted to; ``ece_noise``: the ECE a perfectly calibrated model with
    the "after" confidences reaches by chance on this many windows (95th percentile).

    A bias can change which class is predicted (it corrects a model that favours some classes on this
    data); the temperature alone never does."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, int)
    scaled, bias = out_of_fold(mode, logits, labels)
    out = {"ece_before": ece(softmax(logits), labels), "ece_after": ece(softmax(scaled), labels),
           "ece_noise": ece_noise(softmax(scaled)), "calibration_windows": float(len(labels))}
    if not bias:
        return {"temperature": fit_temperature(logits, labels), **out}
    t, b = fit_temperature_bias(logits, labels)
    return {"temperature": t, **{f"calibration_bias_{i}": float(v) for i, v in enumerate(b)}, **out}
