"""Self-supervised objectives: what the encoder learns from windows nobody labeled.

``anomaly``: masked-sample reconstruction. A quarter of the window's time steps are hidden (set to the
channel means) and the whole window must be decoded from the pooled representation; the error of the
unmasked reconstruction is the anomaly score (``WindowTransformer.anomaly_score``). It scores a window
from the window alone, so serving needs no per-device forecast state and no wait for later samples.

``forecast``: the next ``horizon`` samples after a window, where they are known (``future``).

>>> import torch
>>> from model.network import WindowTransformer
>>> from model.spec import ModelSpec
>>> net = WindowTransformer(ModelSpec(window=8, channels=("x",), classes=(), tasks=("anomaly", "forecast"),
...                                   horizon=2, d_model=8, n_heads=2, n_layers=1, d_ff=16))
>>> float(self_supervised_loss(net, torch.zeros(4, 8, 1), torch.zeros(4, 2, 1)).detach()) > 0
True
"""

from __future__ import annotations

import numpy as np
import torch

MASK_SHARE = 0.25


def masked_reconstruction_loss(net, x: torch.Tensor, mask_share: float = MASK_SHARE,
                               rng: np.random.Generator | None = None) -> torch.Tensor:
    """Mean squared error (normalised units) of windows decoded from their pooled representation with
    ``mask_share`` of their time steps hidden (drawn from ``rng`` when given, so a replay hides the same)."""
    z = net.normalise(x)
    draws = torch.as_tensor(rng.random(z.shape[:2]), device=z.device) if rng is not None else \
        torch.rand(z.shape[:2], device=z.device)
    hidden = draws < mask_share
    decoded = net.decoder(net.encode(z.masked_fill(hidden[..., None], 0.0))).view_as(z)
    return ((decoded - z) ** 2).mean()


def forecast_loss(net, x: torch.Tensor, future: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error (normalised units) of the forecast of the ``future`` samples after each window."""
    predicted = net.normalise(net.forecast(x, features))
    return ((predicted - net.normalise(future)) ** 2).mean()


def self_supervised_loss(net, x: torch.Tensor, future: torch.Tensor | None = None,
                         rng: np.random.Generator | None = None) -> torch.Tensor:
    """The sum of the objectives of the heads ``net`` has (zero when it has none; no forecast term
    without ``future``); masks from ``rng`` when given."""
    loss = torch.zeros((), device=x.device)
    if net.spec.has("anomaly"):
        loss = loss + masked_reconstruction_loss(net, x, rng=rng)
    if net.spec.has("forecast") and future is not None:
        loss = loss + forecast_loss(net, x, future)
    return loss


def windows_with_future(series: np.ndarray, window: int, horizon: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut one series ``[time, channels]`` into windows and the ``horizon`` samples after each.

    >>> X, F = windows_with_future(np.arange(10, dtype=np.float32)[:, None], window=4, horizon=2, stride=3)
    >>> X[:, :, 0].tolist(), F[:, :, 0].tolist()
    ([[0.0, 1.0, 2.0, 3.0], [3.0, 4.0, 5.0, 6.0]], [[4.0, 5.0], [7.0, 8.0]])
    """
    starts = range(0, len(series) - window - horizon + 1, stride)
    X = np.stack([series[s:s + window] for s in starts]) if starts else np.zeros((0, window, series.shape[1]))
    F = np.stack([series[s + window:s + window + horizon] for s in starts]) if starts else \
        np.zeros((0, horizon, series.shape[1]))
    return X.astype(np.float32), F.astype(np.float32)


@torch.inference_mode()
def window_errors(net, X: np.ndarray, future: np.ndarray | None = None, has_future: np.ndarray | None = None
                  ) -> np.ndarray:
    """Each window's self-supervised error (normalised units): its reconstruction error where the model has an
    anomaly head, plus its forecast error where it forecasts and the window's ``future`` is known
    (``has_future``).
    """
    net.eval()
    x = torch.as_tensor(np.asarray(X, np.float32))
    errors = torch.zeros(len(x))
    if net.spec.has("anomaly"):
        errors += net.reconstruction_error(x)
    if net.spec.has("forecast") and future is not None:
        known = torch.as_tensor(has_future if has_future is not None else np.ones(len(x), bool))
        f = torch.as_tensor(np.asarray(future, np.float32))
        err = ((net.normalise(net.forecast(x)) - net.normalise(f)) ** 2).mean(dim=(1, 2))
        errors += torch.where(known, err, torch.zeros_like(err))
    return errors.numpy()


@torch.inference_mode()
def baseline_errors(net, X: np.ndarray, future: np.ndarray | None = None, has_future: np.ndarray | None = None
                    ) -> np.ndarray:
    """:func:`window_errors` of the trivial model in ``net``'s units: every sample rebuilt as its channel's mean,
    the next samples forecast as the last one repeated."""
    x = torch.as_tensor(np.asarray(X, np.float32))
    z = net.normalise(x)
    errors = torch.zeros(len(x))
    if net.spec.has("anomaly"):
        errors += (z ** 2).mean(dim=(1, 2))
    if net.spec.has("forecast") and future is not None:
        known = torch.as_tensor(has_future if has_future is not None else np.ones(len(x), bool))
        f = net.normalise(torch.as_tensor(np.asarray(future, np.float32)))
        err = ((z[:, -1:, :] - f) ** 2).mean(dim=(1, 2))
        errors += torch.where(known, err, torch.zeros_like(err))
    return errors.numpy()
