"""A small Transformer encoder that classifies a window of multichannel readings."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
from torch import nn

from model.spec import ModelSpec


class WindowTransformer(nn.Module):
    """Transformer encoder over a window ``[batch, time, channels]`` returning class logits.

    Input normalisation (per-channel mean/std) is part of the network, so the exported
    ONNX graph takes raw sensor values.

    >>> spec = ModelSpec(window=8, d_model=16, n_heads=2, n_layers=1, d_ff=32)
    >>> net = WindowTransformer(spec).eval()
    >>> tuple(net(torch.zeros(3, 8, 6)).shape)
    (3, 4)
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.zeros(spec.n_channels))
        self.register_buffer("std", torch.ones(spec.n_channels))
        self.embed = nn.Linear(spec.n_channels, spec.d_model)
        self.position = nn.Parameter(torch.randn(1, spec.window, spec.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            spec.d_model, spec.n_heads, spec.d_ff, spec.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, spec.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(spec.d_model)
        self.head = nn.Linear(spec.d_model, spec.n_classes)

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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled representation of each window (``[batch, d_model]``)."""
        h = self.embed((x - self.mean) / self.std) + self.position
        return self.norm(self.encoder(h).mean(dim=1))

    @torch.inference_mode()
    def window_features(self, X: np.ndarray) -> np.ndarray:
        """:meth:`features` of windows ``[n, time, channels]`` in evaluation mode, as float64 (what the LDA
        output layer learns from)."""
        return self.eval().features(torch.as_tensor(np.asarray(X, np.float32))).double().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ProbabilityModel(nn.Module):
    """Wraps a classifier so it returns class probabilities (what serving exports), its logits
    divided by the version's calibration ``temperature`` (``model.calibration``)."""

    def __init__(self, net: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x) / self.temperature, dim=-1)
