"""Streaming linear discriminant analysis: an output layer learned in closed form from every label.

Per class a running mean of the encoder's features, one shared covariance, and the linear classifier
they imply (``W = mu @ inv(S)``, ``b = -0.5 * diag(mu @ inv(S) @ mu.T)``, the covariance shrunk
towards the identity). One label moves its class's mean at once, so a label counts fully the moment it
arrives, where a gradient step counts a little; a new class needs no output-layer surgery beyond one
more mean. With ``decay`` > 0 the statistics forget at that rate per label, so they follow a drifting
stream. The result is an ordinary ``nn.Linear`` head, so the exported ONNX graph is unchanged.

After Hayes & Kanan, "Lifelong Machine Learning with Deep Streaming Linear Discriminant Analysis"
(CVPR workshops 2020).

>>> import numpy as np
>>> lda = StreamingLDA(n_features=2, n_classes=2)
>>> for x, c in [([0.0, 0.1], 0), ([0.1, 0.0], 0), ([2.0, 2.1], 1), ([2.1, 1.9], 1)]:
...     lda.learn_one(np.asarray(x), c)
>>> W, b = lda.weights()
>>> int((W @ np.asarray([1.9, 2.0]) + b).argmax()), int((W @ np.asarray([0.2, 0.1]) + b).argmax())
(1, 0)
"""

from __future__ import annotations

import io

import numpy as np

UNSEEN_BIAS = -1e4  # a class with no label yet is never predicted
LDA_FILE = "lda-stats.npz"  # a version's LDA statistics in the registry (features of its own encoder)


class StreamingLDA:
    """Class means and a shared covariance of feature vectors, updated one label at a time."""

    def __init__(self, n_features: int, n_classes: int, shrinkage: float = 1e-2, decay: float = 0.0) -> None:
        if not 0.0 <= shrinkage <= 1.0 or not 0.0 <= decay < 1.0:
            raise ValueError("shrinkage must be in [0, 1] and decay in [0, 1)")
        self.shrinkage, self.decay = shrinkage, decay
        self.means = np.zeros((n_classes, n_features))
        self.counts = np.zeros(n_classes)
        self.cov = np.zeros((n_features, n_features))
        self.seen = 0.0  # labels behind the covariance (with decay: an effective, bounded count)

    @property
    def n_classes(self) -> int:
        return len(self.counts)

    def learn_one(self, x: np.ndarray, label: int) -> None:
        x = np.asarray(x, np.float64)
        if self.decay:
            self.counts *= 1.0 - self.decay
            self.seen *= 1.0 - self.decay
        if self.counts[label] > 0 and self.seen > 0:
            delta = x - self.means[label]
            self.cov = (self.seen * self.cov + self.seen / (self.seen + 1.0) * np.outer(delta, delta)) / (self.seen + 1.0)
        self.counts[label] += 1.0
        self.means[label] += (x - self.means[label]) / self.counts[label]
        self.seen += 1.0

    def learn_many(self, X: np.ndarray, labels: np.ndarray) -> None:
        for x, label in zip(X, labels):
            self.learn_one(x, int(label))

    def add_classes(self, n: int) -> None:
        """``n`` more classes, with no label yet."""
        self.means = np.vstack([self.means, np.zeros((n, self.means.shape[1]))])
        self.counts = np.concatenate([self.counts, np.zeros(n)])

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """The linear classifier ``(W [classes, features], b [classes])`` the statistics imply."""
        d = self.cov.shape[0]
        precision = np.linalg.inv((1.0 - self.shrinkage) * self.cov + self.shrinkage * np.eye(d))
        W = self.means @ precision
        b = -0.5 * np.einsum("kd,kd->k", W, self.means)
        b[self.counts <= 0] = UNSEEN_BIAS
        return W, b

    def to_bytes(self) -> bytes:
        """The statistics (not the settings) as an ``.npz`` file's bytes.

        >>> lda = StreamingLDA(2, 2)
        >>> lda.learn_one(np.ones(2), 1)
        >>> StreamingLDA.from_bytes(lda.to_bytes()).counts.tolist()
        [0.0, 1.0]
        """
        buf = io.BytesIO()
        np.savez(buf, means=self.means, counts=self.counts, cov=self.cov, seen=np.asarray(self.seen))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, shrinkage: float = 1e-2, decay: float = 0.0) -> "StreamingLDA":
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            out = cls(f["means"].shape[1], f["means"].shape[0], shrinkage, decay)
            out.means, out.counts, out.cov, out.seen = f["means"], f["counts"], f["cov"], float(f["seen"])
        return out
