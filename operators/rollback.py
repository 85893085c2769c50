"""Automatic rollback: the version in service against the one before it, on the same live windows.

The audit sample is uniform over all windows (``operators.routing``), so the labelers' answers to
audit requests say how a version does on the live stream. For each audit window the newest version
served, the learning job also asks the version before it (which it keeps), so the two are compared
on the same windows at the same time: a drift that hurts both does not count against the newer one.
The decision is a paired sign test: of the windows exactly one of them gets right, the older one must
win clearly more (``losses - wins > z * sqrt(wins + losses)``, one-sided), after at least
``min_audits`` audit answers. Each version is judged until it is rolled back or replaced.

>>> watch = RollbackWatch(z=2.33, min_audits=30)
>>> watch.start(version=2, parent=1)
>>> verdicts = [watch.observe(new_right=i % 3 == 0, old_right=True) for i in range(40)]
>>> [v for v in verdicts if v][0]
Rollback(version=2, to_version=1, reason='v2 wrong where v1 was right on 20 of 30 live audit windows, right where v1 was wrong on 0 (rollback_z 2.33)')
>>> watch.observe(new_right=False, old_right=True) is None   # judged once
True
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.gate import wins_clearly


@dataclass(frozen=True)
class Rollback:
    """Serve ``to_version`` again instead of ``version``, and why."""

    version: int
    to_version: int
    reason: str


@dataclass
class RollbackWatch:
    """Paired audit tally of the version in service against its predecessor."""

    z: float = 3.0
    min_audits: int = 30
    version: int | None = None
    parent: int | None = None
    audits: int = 0
    wins: int = 0  # the newer version right, the older wrong
    losses: int = 0  # the older right, the newer wrong

    def start(self, version: int, parent: int | None) -> None:
        """``version`` now serves, replacing ``parent`` (None: nothing to go back to)."""
        self.version, self.parent = version, parent
        self.audits = self.wins = self.losses = 0

    def observe(self, new_right: bool, old_right: bool) -> Rollback | None:
        """One audit answer for a window the version in service scored; a rollback when one is due."""
        if self.z <= 0 or self.parent is None:
            return None
        self.audits += 1
        self.wins += int(new_right and not old_right)
        self.losses += int(old_right and not new_right)
        if self.audits < self.min_audits or not wins_clearly(self.losses, self.wins, self.z):  # the older one wins
            return None
        rollback = Rollback(self.version, self.parent,
                            f"v{self.version} wrong where v{self.parent} was right on {self.losses} of {self.audits} "
                            f"live audit windows, right where v{self.parent} was wrong on {self.wins} "
                            f"(rollback_z {self.z:g})")
        self.parent = None  # judged: nothing more to decide until the next version
        return rollback
