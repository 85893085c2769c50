"""A small Transformer encoder over a window of multichannel readings, with a head per task: class
logits (``classify``), a reconstruction of the window whose error is the anomaly score (``anomaly``),
and the next samples of every channel (``forecast``)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
from torch import nn

from model.spec import ModelSpec


TAIL_LEVELS = 90  # percentiles of normal windows' anomaly statistic kept (1st..90th); an exponential tail above
NORMAL_CENTRES = 8  # centres of normal features: the mean of all, and up to 7 patterns people confirmed as normal
FLAT_FLOOR = 1e-6  # a channel's deviation within a window, in its own standard deviations, is floored here (log)
STILL = 1e-3  # ... and below this deviation a channel is flatter than any sensor's noise: frozen
# buffers added with the flatness part: weights saved before it load without them (the part stays off)
FLATNESS_BUFFERS = ("flat_tails", "joint_tail")


def rarity(statistic: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """-log10 of the share of normal windows whose statistic is at least ``statistic``, from ``tail`` (their
    1st..90th percentiles, then the start and mean excess of an exponential tail above the 90th). Several
    statistics at once: ``statistic`` ``[batch, k]`` with ``tail`` ``[k, TAIL_LEVELS + 2]``.

    >>> tail = fit_rarity(torch.arange(1000, dtype=torch.float64))
    >>> [round(float(v), 2) for v in rarity(torch.tensor([10.0, 500.0, 950.0], dtype=torch.float64), tail)]
    [0.0, 0.3, 1.44]
    """
    grid, start, excess = tail[..., :TAIL_LEVELS], tail[..., TAIL_LEVELS], tail[..., TAIL_LEVELS + 1]
    below = (grid < statistic[..., None]).sum(dim=-1)  # percentiles passed (a tie is not rare); interpolate
    grids = grid.expand(*statistic.shape, TAIL_LEVELS)
    upper = torch.gather(grids, -1, below.clamp(max=TAIL_LEVELS - 1)[..., None])[..., 0]
    lower = torch.gather(grids, -1, (below - 1).clamp(min=0)[..., None])[..., 0]
    within = ((statistic - lower) / (upper - lower).clamp_min(1e-12)).clamp(0.0, 1.0)
    level = below.to(statistic.dtype) + within  # grid[i] is the (i + 1)th percentile
    body = -torch.log10((1.0 - level / 100.0).clamp_min(0.1))
    return torch.where(statistic > start, 1.0 + (statistic - start) / (excess * math.log(10.0)), body)


def fit_rarity(statistic: torch.Tensor) -> torch.Tensor:
    """The ``tail`` of :func:`rarity` for normal windows' ``statistic`` values."""
    statistic = statistic.double()
    grid = torch.quantile(statistic, torch.arange(1, TAIL_LEVELS + 1, dtype=torch.float64) / 100.0)
    start = torch.quantile(statistic, 0.9)
    excess = statistic[statistic > start] - start
    mean_excess = excess.mean().clamp_min(1e-3) if len(excess) else torch.tensor(1.0, dtype=torch.float64)
    return torch.cat([grid, start[None], mean_excess[None]])


def k_means(points: torch.Tensor, k: int, rounds: int = 20) -> list[torch.Tensor]:
    """Up to ``k`` centres of ``points`` (``[n, d]``): farthest-point start from the first point, then Lloyd
    rounds; deterministic, so a replayed fit gives the same centres.

    >>> [c.tolist() for c in k_means(torch.tensor([[0.0], [0.1], [5.0], [5.2]]), 2)]
    [[0.05000000074505806], [5.099999904632568]]
    """
    k = min(k, len(points))
    centres = [points[0]]
    while len(centres) < k:
        d = torch.cdist(points, torch.stack(centres)).min(dim=1).values
        if float(d.max()) == 0.0:
            break
        centres.append(points[int(d.argmax())])
    c = torch.stack(centres)
    for _ in range(rounds):
        nearest = torch.cdist(points, c).argmin(dim=1)
        c = torch.stack([points[nearest == j].mean(0) if (nearest == j).any() else c[j] for j in range(len(c))])
    return list(c)


def window_summary(z: torch.Tensor) -> torch.Tensor:
    """Each channel's mean, deviation, minimum and maximum over a window (``[batch, time, channels]`` to
    ``[batch, 4 * channels]``), in operations every ONNX opset the export uses has.

    >>> [round(v, 3) for v in window_summary(torch.tensor([[[0.0, 1.0], [2.0, 1.0]]]))[0].tolist()]
    [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 2.0, 1.0]
    """
    mean = z.mean(dim=1)
    # (clamped: a still channel has no deviation, and the square root's slope at zero is infinite)
    deviation = ((z - mean[:, None, :]) ** 2).mean(dim=1).clamp_min(1e-12).sqrt()
    return torch.cat([mean, deviation, z.amin(dim=1), z.amax(dim=1)], dim=1)


class WindowTransformer(nn.Module):
    """Transformer encoder over a window ``[batch, time, channels]``; calling it returns class logits.

    Input normalisation (per-channel mean/std) is part of the network, so the exported
    ONNX graph takes raw sensor values. The other heads read the same pooled representation:
    ``anomaly`` decodes the whole window from it (a bottleneck, so only patterns like the ones it
    learned come back well) and scores a window by how badly, ``forecast`` predicts the next
    ``spec.horizon`` samples.

    >>> spec = ModelSpec(window=8, d_model=16, n_heads=2, n_layers=1, d_ff=32)
    >>> net = WindowTransformer(spec).eval()
    >>> tuple(net(torch.zeros(3, 8, 6)).shape)
    (3, 4)
    >>> net = WindowTransformer(ModelSpec(window=8, classes=(), tasks=("anomaly", "forecast"), horizon=2,
    ...                                   d_model=16, n_heads=2, n_layers=1, d_ff=32)).eval()
    >>> tuple(net.anomaly_score(torch.zeros(3, 8, 6)).shape), tuple(net.forecast(torch.zeros(3, 8, 6)).shape)
    ((3,), (3, 2, 6))
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.zeros(spec.n_channels))
        self.register_buffer("std", torch.ones(spec.n_channels))
        self.embed = nn.Linear(spec.n_channels * spec.patch, spec.d_model)  # a token: patch samples, all channels
        self.position = nn.Parameter(torch.randn(1, spec.tokens, spec.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            spec.d_model, spec.n_heads, spec.d_ff, spec.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, spec.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(spec.d_model)
        self.head = nn.Linear(spec.class_features, spec.n_classes) if spec.has("classify") else None
        if spec.has("anomaly"):
            self.decoder = nn.Linear(spec.d_model, spec.window * spec.n_channels)
            # the score's parts, fitted on normal windows (fit_anomaly_scale): where their features lie, and
            # centre and scale of the log reconstruction error and of the log feature distance
            # where normal windows' features lie: their mean, then the centres of patterns people confirmed as
            # normal (unused slots repeat the mean); a window's distance is to the nearest
            self.register_buffer("feature_means", torch.zeros(NORMAL_CENTRES, spec.d_model))
            # how much worse than typical the windows of each centre's pattern are rebuilt (log error): a
            # window is compared with its own pattern's (0 for the mean of all and unused slots)
            self.register_buffer("centre_error_offsets", torch.zeros(NORMAL_CENTRES))
            self.register_buffer("feature_precision", torch.eye(spec.d_model))
            self.register_buffer("score_center", torch.zeros(2))
            self.register_buffer("score_scale", torch.ones(2))
            # how often normal windows reach a statistic: its 1st..90th percentiles, and an exponential tail
            # above the 90th (its start and mean excess)
            self.register_buffer("tail_grid", torch.zeros(TAIL_LEVELS))
            self.register_buffer("tail_start", torch.zeros(()))
            self.register_buffer("tail_mean_excess", torch.ones(()))
            # flatness: per channel, the rarity tail of how frozen it is (_flat_parts) among normal windows
            # (all zero: not fitted, the part is off), and the rarity tail of the larger of the statistic's
            # rarity and the most frozen channel's (so the score keeps one false-alarm rate)
            self.register_buffer("flat_tails", torch.zeros(spec.n_channels, TAIL_LEVELS + 2))
            self.register_buffer("joint_tail", torch.ones(TAIL_LEVELS + 2))
        if spec.has("forecast"):
            self.forecaster = nn.Linear(spec.d_model, spec.horizon * spec.n_channels)

    def set_normalisation(self, windows: np.ndarray) -> None:
        """Fit the per-channel mean/std from training windows ``[n, time, channels]``."""
        flat = torch.as_tensor(windows, dtype=torch.float32).reshape(-1, self.spec.n_channels)
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-6))

    def add_classes(self, names: Sequence[str]) -> list[str]:
        """Grow the output layer in place by the classes of ``names`` it lacks (returned, in order). Known
        classes keep their index and weights; a new class starts with zero weights (the same on every
        replay of a journal) and the known classes' mean bias, so it is neither
        favoured nor impossible before it is learned.

        >>> spec = ModelSpec(window=8, classes=("a", "b"), d_model=16, n_heads=2, n_layers=1, d_ff=32)
        >>> net = WindowTransformer(spec).eval()
        >>> before = net(torch.zeros(1, 8, 6))
        >>> net.add_classes(["b", "c"]), net.spec.classes
        (['c'], ('a', 'b', 'c'))
        >>> bool(torch.allclose(net(torch.zeros(1, 8, 6))[:, :2], before))
        True
        """
        new = list(dict.fromkeys(c for c in names if c not in self.spec.classes))
        if not new:
            return []
        old = self.head
        head = nn.Linear(old.in_features, old.out_features + len(new))
        with torch.no_grad():
            head.weight[:old.out_features] = old.weight
            head.bias[:old.out_features] = old.bias
            head.weight[old.out_features:] = 0.0
            head.bias[old.out_features:] = old.bias.mean()
        self.head = head.to(old.weight.device)
        self.spec = replace(self.spec, classes=(*self.spec.classes, *new))
        return new

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw readings in the network's own units (per channel: zero mean, unit deviation on its training data)."""
        return (x - self.mean) / self.std

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Pooled representation of normalised windows (``[batch, d_model]``)."""
        if self.spec.patch > 1:  # consecutive samples side by side: [batch, tokens, patch * channels]
            z = z.reshape(-1, self.spec.tokens, self.spec.patch * self.spec.n_channels)
        return self.norm(self.encoder(self.embed(z) + self.position).mean(dim=1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled representation of each window (``[batch, d_model]``)."""
        return self.encode(self.normalise(x))

    def class_features(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """What the classify head reads: the pooled representation (``features``, when already computed),
        with ``spec.summary_features`` followed by :func:`window_summary` of the normalised window."""
        f = self.features(x) if features is None else features
        return torch.cat([f, window_summary(self.normalise(x))], dim=1) if self.spec.summary_features else f

    def reconstruction_error(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error, in normalised units, of each window's reconstruction (``[batch]``)."""
        z = self.normalise(x)
        f = self.encode(z) if features is None else features
        return ((self.decoder(f).view_as(z) - z) ** 2).mean(dim=(1, 2))

    def feature_distance(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared Mahalanobis distance of pooled features from the nearest centre of normal windows' (the mean
        of them all, or a pattern people confirmed as normal), and which centre that is (``[batch]`` each)."""
        d = features[:, None, :] - self.feature_means[None, :, :]  # [batch, centres, d_model]
        nearest = ((d @ self.feature_precision) * d).sum(dim=2).min(dim=1)
        return nearest.values, nearest.indices

    def anomaly_parts(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Log reconstruction error (less its nearest centre's offset) and log feature distance of each window
        (``[batch, 2]``)."""
        f = self.features(x) if features is None else features
        distance, centre = self.feature_distance(f)
        return torch.stack([torch.log(self.reconstruction_error(x, f) + 1e-6) - self.centre_error_offsets[centre],
                            torch.log(distance + 1e-6)], dim=1)

    def anomaly_statistic(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of two robust z-scores (``[batch]``): of the log reconstruction error (the self-supervised
        objective's error: patterns it cannot rebuild) and of the log distance of the window's features
        from the normal windows' (patterns it encodes unlike them)."""
        return ((self.anomaly_parts(x, features) - self.score_center) / self.score_scale).mean(dim=1)

    @property
    def anomaly_score_fitted(self) -> bool:
        """Whether :meth:`fit_anomaly_scale` has run (before it the score means nothing)."""
        return hasattr(self, "tail_grid") and bool(self.tail_grid.any())

    @property
    def statistic_tail(self) -> torch.Tensor:
        """The :func:`rarity` tail of :meth:`anomaly_statistic` (kept in three buffers, as before the flatness
        part, so older weights load)."""
        return torch.cat([self.tail_grid, self.tail_start[None], self.tail_mean_excess[None]])

    def _flat_parts(self, x: torch.Tensor) -> torch.Tensor:
        """Per channel, how far (log) its deviation within the window lies below ``STILL``, 0 above it
        (``[batch, channels]``). Only a frozen channel reaches it: a working sensor's noise alone moves it
        more, even at rest (measured: a channel flatter than usual but not frozen, of a device at rest, was
        taken for a fault on new recordings, so flatness short of frozen does not count)."""
        log_deviation = torch.log(self.normalise(x).std(dim=1, unbiased=False) + FLAT_FLOOR)
        return (math.log(STILL) - log_deviation).clamp_min(0.0)

    def flatness(self, x: torch.Tensor) -> torch.Tensor:
        """How rare among normal windows each window's most frozen channel is (``[batch]``): the largest rarity
        of :meth:`_flat_parts`. A channel stuck at one value (a frozen sensor, a dropped link repeating its
        last reading) scores high however plausible the value, which the reconstruction error misses: a flat
        line is easy to rebuild. A channel that is often frozen in normal data (a quantized sensor at rest)
        is not rare, so it does not score."""
        return self._flatness_of(self._flat_parts(x))

    def _flatness_of(self, flat_parts: torch.Tensor) -> torch.Tensor:
        return rarity(flat_parts, self.flat_tails.to(flat_parts.dtype)).max(dim=1).values

    @property
    def flatness_fitted(self) -> bool:
        """Whether the score has its flatness part (weights saved before it existed do not)."""
        return hasattr(self, "flat_tails") and bool(self.flat_tails.any())

    def anomaly_score(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """How rare each window would be among normal windows (``[batch]``): -log10 of the share of normal
        windows whose statistic (:meth:`anomaly_statistic`) is at least as high, from their percentiles
        up to the 90th and from an exponential tail above it. So 1 = as high as the top 10 % of normal
        windows, 3 = the top 0.1 %: a threshold means one false alarm rate whatever the model or device.
        Where the flatness part is fitted, the same holds for the larger of the statistic's rarity and
        :meth:`flatness`'s, taken as rare as that larger value is among normal windows."""
        score = rarity(self.anomaly_statistic(x, features), self.statistic_tail.to(x.dtype))
        if not self.flatness_fitted:
            return score
        return rarity(torch.maximum(score, self.flatness(x)), self.joint_tail.to(x.dtype))

    @torch.no_grad()
    def fit_anomaly_scale(self, windows: np.ndarray, shrinkage: float = 0.1, batch_size: int = 512,
                          confirmed: np.ndarray | None = None) -> None:
        """Fit the anomaly score on ``windows`` taken as normal: their features' mean and (shrunk) covariance,
        the median and 1.4826 x median absolute deviation of each log part, and how often they reach each
        value of the statistic, so a threshold on the score means the same for every model. ``confirmed``:
        windows people said are normal; their patterns become centres of normal too (up to
        ``NORMAL_CENTRES - 1``, by k-means on their features), each with the reconstruction error its windows
        have, so a window like them scores like a typical one; they count among the normal windows."""
        if confirmed is not None and len(confirmed):
            windows = np.concatenate([np.asarray(windows, np.float32), np.asarray(confirmed, np.float32)])
        was_training = self.training
        self.eval()
        x = torch.as_tensor(np.asarray(windows, np.float32))
        feats = torch.cat([self.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).double()
        cov = torch.cov(feats.T) if len(feats) > 1 else torch.eye(feats.shape[1], dtype=torch.float64)
        target = torch.eye(len(cov), dtype=cov.dtype) * cov.diagonal().mean().clamp_min(1e-6)
        centres = [feats.mean(0)]
        if confirmed is not None and len(confirmed):
            centres += k_means(feats[-len(confirmed):], NORMAL_CENTRES - 1)
        self.feature_means.copy_(torch.stack(centres + [centres[0]] * (NORMAL_CENTRES - len(centres))))
        self.feature_precision.copy_(torch.linalg.inv((1 - shrinkage) * cov + shrinkage * target))
        self.centre_error_offsets.zero_()
        parts = torch.cat([self.anomaly_parts(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        if len(centres) > 1:  # each confirmed pattern's windows are rebuilt as well or as badly as they are
            _, nearest = self.feature_distance(feats[-len(confirmed):].float())
            typical = parts[:, 0].median()
            offsets = torch.zeros(NORMAL_CENTRES)
            for k in range(1, len(centres)):
                members = parts[-len(confirmed):, 0][nearest == k]
                if len(members):
                    offsets[k] = (members.median() - typical).clamp_min(0.0)
            self.centre_error_offsets.copy_(offsets)
            parts = torch.cat([self.anomaly_parts(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        center = parts.median(dim=0).values
        self.score_center.copy_(center)
        self.score_scale.copy_((1.4826 * (parts - center).abs().median(dim=0).values).clamp_min(1e-3))
        stat = ((parts - self.score_center) / self.score_scale).mean(dim=1).double()
        tail = fit_rarity(stat)
        self.tail_grid.copy_(tail[:TAIL_LEVELS])
        self.tail_start.copy_(tail[TAIL_LEVELS])
        self.tail_mean_excess.copy_(tail[TAIL_LEVELS + 1])
        flat = self._flat_parts(x.double())
        self.flat_tails.copy_(torch.stack([fit_rarity(flat[:, k]) for k in range(flat.shape[1])]))
        self.joint_tail.copy_(fit_rarity(torch.maximum(rarity(stat, tail), self._flatness_of(flat))))
        self.train(was_training)

    def forecast(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The next ``spec.horizon`` samples of every channel after each window, in raw units
        (``[batch, horizon, channels]``)."""
        f = self.features(x) if features is None else features
        return self.forecaster(f).view(-1, self.spec.horizon, self.spec.n_channels) * self.std + self.mean

    @torch.inference_mode()
    def window_features(self, X: np.ndarray) -> np.ndarray:
        """:meth:`class_features` of windows ``[n, time, channels]`` in evaluation mode, as float64 (what the
        LDA output layer learns from)."""
        return self.eval().class_features(torch.as_tensor(np.asarray(X, np.float32))).double().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise ValueError(f"the model has no classify head (tasks: {list(self.spec.tasks)})")
        return self.head(self.class_features(x))


class ProbabilityModel(nn.Module):
    """Wraps a network so it returns what serving exports: class probabilities (its logits divided by
    the version's calibration ``temperature``, plus its ``class_bias`` if it has one, ``model.calibration``),
    then the anomaly score and the forecast where the model has those heads; one encoder pass for all of
    them."""

    def __init__(self, net: nn.Module, temperature: float = 1.0, class_bias=None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        # bias-corrected temperature scaling (learning.calibration = "temperature_bias"): one bias per class
        self.register_buffer("class_bias", None if class_bias is None else torch.as_tensor(class_bias,
                                                                                             dtype=torch.float32))

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        scaled = logits / self.temperature
        return torch.softmax(scaled if self.class_bias is None else scaled + self.class_bias, dim=-1)

    def forward(self, x: torch.Tensor):
        spec, net = self.net.spec, self.net
        if spec.tasks == ("classify",):
            return self._probabilities(net(x))
        f = net.features(x)
        outputs = []
        if spec.has("classify"):
            outputs.append(self._probabilities(net.head(net.class_features(x, f))))
        if spec.has("anomaly"):
            outputs.append(net.anomaly_score(x, f))
        if spec.has("forecast"):
            outputs.append(net.forecast(x, f))
        return tuple(outputs)
