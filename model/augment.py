"""Sensor-window augmentation: copies of labeled windows as another person or another sensor might have
recorded them, so a model trained on a few people generalises to people it never saw.

Each copy of a window gets, per channel, a random gain and offset (sensors and mountings differ), a random
speed (people move faster or slower: the window is resampled about its centre) and a little noise.

>>> import numpy as np
>>> X = np.sin(np.linspace(0, 6, 32, dtype=np.float32))[None, :, None].repeat(4, axis=0)
>>> copies = WindowAugmenter().augment(X, np.random.default_rng(0))
>>> copies.shape, copies.dtype
((4, 32, 1), dtype('float32'))
>>> bool(np.allclose(copies, X))                   # every copy differs from its window
False
>>> bool(np.corrcoef(copies[0, :, 0], X[0, :, 0])[0, 1] > 0.8)   # and still has its shape
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowAugmenter:
    """Random gain in [``gain_low``, ``gain_high``], offset (``offset_sd`` of the channel's deviation),
    speed in [``speed_low``, ``speed_high``] and noise (``noise_sd`` of the channel's deviation) per copy."""

    gain_low: float = 0.7
    gain_high: float = 1.4
    offset_sd: float = 0.3
    speed_low: float = 0.8
    speed_high: float = 1.25
    noise_sd: float = 0.05

    def augment(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One augmented copy of each window of ``X`` ([n, window, channels])."""
        X = np.asarray(X, np.float32)
        n, window, channels = X.shape
        sd = X.reshape(-1, channels).std(axis=0) + 1e-6  # each channel's spread, the scale of offset and noise
        t = np.arange(window, dtype=np.float32)
        speed = rng.uniform(self.speed_low, self.speed_high, (n, 1))
        source = np.clip((t - t.mean()) * speed + t.mean(), 0, window - 1)  # [n, window]: where each sample is read
        left = np.floor(source).astype(int)
        right = np.minimum(left + 1, window - 1)
        frac = (source - left)[:, :, None]
        rows = np.arange(n)[:, None]
        warped = X[rows, left] * (1 - frac) + X[rows, right] * frac
        gain = rng.uniform(self.gain_low, self.gain_high, (n, 1, channels))
        offset = rng.normal(0.0, self.offset_sd, (n, 1, channels)) * sd
        noise = rng.normal(0.0, self.noise_sd, X.shape) * sd
        return (warped * gain + offset + noise).astype(np.float32)

    def expand(self, X: np.ndarray, y: np.ndarray, copies: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``X`` and ``copies`` fresh augmented copies of it, with their labels.

        >>> X, y = np.zeros((3, 8, 2), np.float32), np.array([0, 1, 2])
        >>> Xa, ya = WindowAugmenter().expand(X, y, 2, np.random.default_rng(0))
        >>> Xa.shape, ya.tolist()
        ((9, 8, 2), [0, 1, 2, 0, 1, 2, 0, 1, 2])
        """
        if copies <= 0:
            return X, y
        return (np.concatenate([X, *(self.augment(X, rng) for _ in range(copies))]),
                np.tile(np.asarray(y), copies + 1))
