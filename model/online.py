"""Online learning from labeled windows: replay reservoir, EWC penalty, distillation from the previous
version (learning without forgetting), mini-batch updates, and classes added while learning.

>>> import numpy as np
>>> r = ReplayReservoir(capacity=4, seed=0)
>>> for i in range(100):
...     r.add(np.full((2, 1), i, np.float32), i % 2)
>>> len(r), r.seen
(4, 100)
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from model.self_supervised import forecast_loss, self_supervised_loss
from model.slda import StreamingLDA
from settings import LearningSettings


class ReplayReservoir:
    """Bounded memory of labeled windows by reservoir sampling (every window seen has the same
    chance to be kept). ``per_class`` keeps a separate reservoir of ``capacity / n_classes``
    per class, so rare classes are not crowded out. Plain numpy, so it pickles into Flink state.
    """

    def __init__(self, capacity: int, per_class: bool = False, n_classes: int = 0, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if per_class and n_classes < 1:
            raise ValueError("a class-balanced reservoir needs n_classes")
        self.capacity = capacity
        self.per_class = per_class
        self.n_classes = n_classes
        self.rng = np.random.default_rng(seed)
        self.items: dict[int, list] = {}  # bucket -> [(window, label)]
        self.bucket_seen: dict[int, int] = {}
        self.seen = 0

    def _bucket_capacity(self) -> int:
        return max(1, self.capacity // self.n_classes) if self.per_class else self.capacity

    def add(self, window: np.ndarray, label: int) -> None:
        bucket = int(label) if self.per_class else 0
        items = self.items.setdefault(bucket, [])
        seen = self.bucket_seen.get(bucket, 0) + 1
        self.bucket_seen[bucket] = seen
        self.seen += 1
        if len(items) < self._bucket_capacity():
            items.append((window, int(label)))
        else:
            slot = int(self.rng.integers(0, seen))
            if slot < len(items):
                items[slot] = (window, int(label))

    def grow(self, n_classes: int) -> None:
        """More classes now share a class-balanced reservoir: each class's share shrinks to make room,
        keeping a uniform sample of what it held."""
        self.n_classes = n_classes
        if not self.per_class:
            return
        cap = self._bucket_capacity()
        for bucket, items in self.items.items():
            if len(items) > cap:
                keep = sorted(self.rng.choice(len(items), size=cap, replace=False))
                self.items[bucket] = [items[i] for i in keep]

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        pairs = [p for v in self.items.values() for p in v]
        if not pairs:
            return np.empty((0,)), np.empty((0,), np.int64)
        return np.stack([w for w, _ in pairs]), np.asarray([y for _, y in pairs], np.int64)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` stored windows drawn uniformly (balanced over classes when per_class)."""
        X, y = self.all()
        if len(y) == 0 or n <= 0:
            return X[:0], y[:0]
        idx = self.rng.choice(len(y), size=min(n, len(y)), replace=False)
        return X[idx], y[idx]


class EWC:
    """Elastic weight consolidation: a quadratic pull towards consolidated weights, weighted by
    the diagonal Fisher information estimated on (replayed) data."""

    def __init__(self, net: nn.Module, X: np.ndarray, y: np.ndarray, batch_size: int = 64) -> None:
        self.anchor = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
        self.fisher = {n: torch.zeros_like(p) for n, p in self.anchor.items()}
        was_training = net.training
        net.eval()
        Xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
        for start in range(0, len(Xt), batch_size):
            net.zero_grad()
            loss = nn.functional.cross_entropy(net(Xt[start:start + batch_size]), yt[start:start + batch_size],
                                               reduction="sum")
            loss.backward()
            for n, p in net.named_parameters():
                if p.grad is not None and n in self.fisher:
                    self.fisher[n] += p.grad.detach() ** 2
        for n in self.fisher:
            self.fisher[n] /= max(1, len(Xt))
        net.zero_grad()
        net.train(was_training)

    def penalty(self, net: nn.Module) -> torch.Tensor:
        """The pull towards the anchor; an output layer grown since (new classes) is pulled on its old rows only."""
        total = torch.zeros(())
        for n, p in net.named_parameters():
            if n in self.fisher:
                anchor = self.anchor[n]
                q = p[:anchor.shape[0]] if p.shape != anchor.shape else p
                total = total + (self.fisher[n] * (q - anchor) ** 2).sum()
        return total


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Learning without forgetting: KL divergence from the teacher's softened outputs to the student's on
    the teacher's classes (a student that has grown new classes is compared on the old ones), scaled by
    ``temperature``² so its gradient does not shrink as the temperature grows.

    >>> t = torch.tensor([[2.0, 0.0]])
    >>> float(distillation_loss(t, t, 2.0))
    0.0
    >>> float(distillation_loss(torch.tensor([[0.0, 2.0, 5.0]]), t, 2.0)) > 0
    True
    """
    k = teacher_logits.shape[1]
    log_student = nn.functional.log_softmax(student_logits[:, :k] / temperature, dim=-1)
    teacher = nn.functional.softmax(teacher_logits / temperature, dim=-1)
    return nn.functional.kl_div(log_student, teacher, reduction="batchmean") * temperature ** 2


class OnlineTrainer:
    """Learns from labeled windows as they arrive: each update mixes the new mini-batch with
    replayed windows, adds the EWC penalty against the last consolidated weights (``ewc_strength``)
    and the distillation loss against the teacher (``distill_strength``: the network as it was at the
    last :meth:`consolidate`, or the version set by :meth:`set_teacher`).

    A network with an anomaly head keeps learning its self-supervised objective on the same windows
    (``model.self_supervised``), so the reconstruction follows the encoder as it changes.

    ``learn_one`` buffers a window and runs an update when ``batch_size`` are waiting;
    :meth:`add_classes` grows the output layer when a class the model does not have is taught.

    With ``head = "lda"`` the encoder stays as it is and the output layer is streaming linear
    discriminant analysis on its features (``model.slda``): each update adds the new windows to the
    class statistics and sets the head from them in closed form, with no gradient step.

    >>> from model.network import WindowTransformer
    >>> from model.spec import ModelSpec
    >>> net = WindowTransformer(ModelSpec(window=4, channels=("x",), classes=("a", "b"), d_model=8, n_heads=2,
    ...                                   n_layers=1, d_ff=16))
    >>> trainer = OnlineTrainer(net, 2, LearningSettings(batch_size=2, distill_strength=1.0))
    >>> trainer.consolidate()
    >>> trainer.add_classes(["c"]), trainer.n_classes
    (['c'], 3)
    >>> [trainer.learn_one(np.ones((4, 1), np.float32), label) for label in (2, 0)]
    [False, True]
    """

    def __init__(self, net: nn.Module, n_classes: int, config: LearningSettings | None = None) -> None:
        self.config = config or LearningSettings()
        self.net = net
        self.n_classes = n_classes
        self.reservoir = ReplayReservoir(self.config.reservoir_capacity, self.config.class_balanced and n_classes > 0,
                                         n_classes, self.config.seed)
        self.optimizer = torch.optim.Adam(net.parameters(), lr=self.config.lr)
        self.ewc: EWC | None = None
        self.teacher: nn.Module | None = None  # distillation's soft targets (None: not distilling yet)
        self.lda = (StreamingLDA(net.head.in_features, n_classes, self.config.lda_shrinkage, self.config.lda_decay)
                    if self.config.head == "lda" else None)
        self.pending: list[tuple[np.ndarray, int]] = []
        self.updates = 0
        self.learned = 0
        self.unlabeled: list[tuple[np.ndarray, np.ndarray | None]] = []  # waiting for a self-supervised step
        self.unlabeled_memory = ReplayReservoir(self.config.reservoir_capacity, seed=self.config.seed + 1)
        self.unlabeled_learned = 0
        self.mask_rng = np.random.default_rng(self.config.seed + 2)  # the reconstruction's masks, kept in state
        self.confirmed_normal = ReplayReservoir(self.config.reservoir_capacity, seed=self.config.seed + 3)
        self.class_anchor: nn.Module | None = None  # the network as the last labels left it (unlabeled_anchor)

    def __setstate__(self, state: dict) -> None:
        """A trainer kept in state before distillation, the LDA head and unlabeled windows existed loads with
        them off (and empty)."""
        state.setdefault("teacher", None)
        state.setdefault("lda", None)
        state.setdefault("unlabeled", [])
        state.setdefault("unlabeled_memory", ReplayReservoir(state["config"].reservoir_capacity,
                                                              seed=state["config"].seed + 1))
        state.setdefault("unlabeled_learned", 0)
        state.setdefault("mask_rng", np.random.default_rng(state["config"].seed + 2))
        state.setdefault("confirmed_normal", ReplayReservoir(state["config"].reservoir_capacity,
                                                             seed=state["config"].seed + 3))
        state.setdefault("class_anchor", None)
        self.__dict__.update(state)

    def learn_unlabeled(self, window: np.ndarray, future: np.ndarray | None = None) -> bool:
        """Take one unlabeled window (with the samples after it, when known) for the network's self-supervised
        heads; returns True when it triggered an update: ``unlabeled_steps`` gradient steps on ``batch_size``
        such windows with remembered ones replayed, and where the network classifies, the classification on
        as many replayed labeled ones, so the shared encoder keeps what the labels taught it (under the LDA
        head the encoder stays fixed, and the windows are only remembered). Every window joins ``unlabeled_memory``, what a published
        version's anomaly score is fitted on."""
        after = None if future is None else np.asarray(future, np.float32)
        self.unlabeled.append((np.asarray(window, np.float32), after))
        if len(self.unlabeled) < self.config.batch_size:
            return False
        batch, self.unlabeled = self.unlabeled, []
        if self.lda is not None:  # the encoder stays fixed under the LDA head: the windows are only remembered
            for window, _ in batch:
                self.unlabeled_memory.add(window, 0)
            self.unlabeled_learned += len(batch)
            return False
        new = np.stack([w for w, _ in batch])
        with_future = [(w, f) for w, f in batch if f is not None] if self.net.spec.has("forecast") else []
        anchor = None  # the class outputs the last labels left on these windows, which the steps are held to
        if self.config.unlabeled_anchor > 0 and self.net.head is not None:
            if self.class_anchor is None:
                self.class_anchor = copy.deepcopy(self.net).eval()
            with torch.no_grad():
                anchor = self.class_anchor(torch.as_tensor(new))
        self.net.train()
        for _ in range(self.config.unlabeled_steps):
            self._self_supervised_step(new, with_future, anchor)
        self.net.eval()
        for window, _ in batch:
            self.unlabeled_memory.add(window, 0)
        self.unlabeled_learned += len(batch)
        self.updates += 1
        return True

    def _self_supervised_step(self, new: np.ndarray, with_future: list, anchor: torch.Tensor | None) -> None:
        """One gradient step on new unlabeled windows, as many remembered ones (``replay_ratio``), windows people
        confirmed as normal (half as many), their forecasts where known, and where the network classifies,
        replayed labels and the new windows' class outputs held to ``anchor`` (``unlabeled_anchor``)."""
        remembered, _ = self.unlabeled_memory.sample(int(round(len(new) * self.config.replay_ratio)))
        confirmed, _ = self.confirmed_normal.sample(len(new) // 2)
        X = torch.as_tensor(np.concatenate([new, *(part for part in (remembered, confirmed) if len(part))]))
        loss = self_supervised_loss(self.net, X, rng=self.mask_rng)
        if with_future:
            loss = loss + forecast_loss(self.net, torch.as_tensor(np.stack([w for w, _ in with_future])),
                                        torch.as_tensor(np.stack([f for _, f in with_future])))
        if anchor is not None:
            loss = loss + self.config.unlabeled_anchor * distillation_loss(self.net(torch.as_tensor(new)), anchor,
                                                                           self.config.distill_temperature)
        X_old, y_old = self.reservoir.sample(len(new))
        if len(y_old) and self.net.head is not None and self.config.head != "lda":
            loss = loss + nn.functional.cross_entropy(self.net(torch.as_tensor(X_old)), torch.as_tensor(y_old))
        if self.ewc is not None and self.config.ewc_strength > 0:
            loss = loss + self.config.ewc_strength * self.ewc.penalty(self.net)
        if loss.requires_grad:  # (a forecast-only network and no window with its future: nothing to learn)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def confirm_normal(self, window: np.ndarray) -> bool:
        """A window people said is normal (an anomaly question answered ``normal``): kept and replayed in every
        self-supervised step from now on, so the pattern stops looking abnormal, and learned as an unlabeled
        window now (returns whether that made a step)."""
        window = np.asarray(window, np.float32)
        self.confirmed_normal.add(window, 0)
        return self.learn_unlabeled(window)

    def learn_one(self, window: np.ndarray, label: int) -> bool:
        """Take one labeled window; returns True when it triggered an update."""
        if not 0 <= label < self.n_classes:
            raise ValueError(f"label index {label} outside 0..{self.n_classes - 1}")
        self.pending.append((np.asarray(window, np.float32), int(label)))
        if len(self.pending) >= self.config.batch_size:
            self.update()
            return True
        return False

    def update(self) -> float:
        """``steps_per_update`` gradient steps on the pending windows, each with a fresh replay sample
        (returns the last step's loss); with the LDA head, the windows join its statistics instead."""
        if not self.pending:
            return 0.0
        X_new = np.stack([w for w, _ in self.pending])
        y_new = np.asarray([y for _, y in self.pending], np.int64)
        loss = 0.0
        if self.lda is not None:
            self.warm_start(X_new, y_new)
        else:
            self.net.train()
            for _ in range(self.config.steps_per_update):
                loss = self._step(X_new, y_new)
            self.net.eval()
        for w, label in self.pending:
            self.reservoir.add(w, label)
        self.class_anchor = None  # the labels moved the classes: unlabeled steps are held to where they are now
        self.learned += len(self.pending)
        self.pending = []
        self.updates += 1
        return loss

    def warm_start(self, X: np.ndarray, y: np.ndarray) -> None:
        """Add labeled windows to the LDA head's statistics (no replay, no reservoir) and set the head."""
        if self.lda is None:
            raise ValueError("warm_start is for head = 'lda'")
        self.lda.learn_many(self.net.window_features(X), y)
        self.set_head()

    def set_head(self) -> None:
        """Set the output layer from the LDA statistics."""
        W, b = self.lda.weights()
        with torch.no_grad():
            self.net.head.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
            self.net.head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))

    def _step(self, X_new: np.ndarray, y_new: np.ndarray) -> float:
        X_old, y_old = self.reservoir.sample(int(round(len(y_new) * self.config.replay_ratio)))
        X = torch.as_tensor(np.concatenate([X_new, X_old]) if len(y_old) else X_new)
        y = torch.as_tensor(np.concatenate([y_new, y_old]) if len(y_old) else y_new)
        logits = self.net(X)
        loss = nn.functional.cross_entropy(logits, y) + self_supervised_loss(self.net, X, rng=self.mask_rng)
        if self.ewc is not None and self.config.ewc_strength > 0:
            loss = loss + self.config.ewc_strength * self.ewc.penalty(self.net)
        if self.teacher is not None and self.config.distill_strength > 0:
            with torch.no_grad():
                soft = self.teacher(X)
            loss = loss + self.config.distill_strength * distillation_loss(logits, soft,
                                                                           self.config.distill_temperature)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.item())

    def consolidate(self) -> None:
        """Make the current weights the EWC anchor, with Fisher information from the reservoir, and the
        distillation teacher (each only while it is on)."""
        if self.config.distill_strength > 0:
            self.set_teacher(self.net)
        if self.config.ewc_strength <= 0:
            return
        X, y = self.reservoir.all()
        if len(y):
            self.ewc = EWC(self.net, X, y)

    def set_teacher(self, net: nn.Module) -> None:
        """Distil from a frozen copy of ``net`` from now on (the version in service, typically)."""
        self.teacher = copy.deepcopy(net).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def add_classes(self, names: list[str]) -> list[str]:
        """Grow the network's output layer by the classes of ``names`` it lacks (returned). Known classes
        keep their weights and index; the optimizer keeps its state for every other parameter."""
        new = self.net.add_classes(names)
        if not new:
            return []
        self.n_classes = len(self.net.spec.classes)
        self.reservoir.grow(self.n_classes)
        self.class_anchor = None
        if self.lda is not None:
            self.lda.add_classes(len(new))
            self.set_head()
        old = self.optimizer
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.config.lr)
        for p in self.net.parameters():
            if p in old.state:
                self.optimizer.state[p] = old.state[p]
        return new

    def snapshot(self) -> nn.Module:
        """A frozen copy of the current network (what a candidate version is built from)."""
        return copy.deepcopy(self.net).eval()
