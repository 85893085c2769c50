"""Per-device sliding windows in event-time order, with out-of-order and late readings handled.

Readings that carry a sequence number are put back in order: a gap waits for the
missing reading until ``max_seq_gap_buffer`` readings are held or the newest is
``seq_gap_timeout_ms`` past the oldest held one, then the gap is skipped (counted); an
in-order reading is used at once.
Readings without one are ordered by timestamp, held until the watermark
(newest timestamp minus ``max_out_of_order_ms``) passes them; with the default bound
of 0 an in-order reading is used at once, so windows add no waiting latency.
A reading behind what was already used is late: it is refused with a reason.

>>> w = SlidingWindower(length=3, stride=2, n_channels=1)
>>> state = w.new_state()
>>> out = [w.add(state, SensorReading("d", ts, [float(ts)], seq=ts), ingest_ms=ts) for ts in (0, 1, 3, 2, 4)]
>>> [(win.start, win.end) for wins, _ in out for win in wins]
[(0, 2), (2, 4)]
>>> w.add(state, SensorReading("d", 1, [1.0], seq=1), ingest_ms=9)[1][0].reason
'late or duplicate: seq 1 already used (next expected 5)'
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import Counter
from itertools import accumulate
from dataclasses import dataclass, field, fields

import numpy as np

from schemas import SensorReading
from schemas.blocks import SampleBlock


@dataclass(slots=True)
class Window:
    """``length`` consecutive readings of one device, oldest first."""

    device_id: str
    start: int
    end: int
    values: np.ndarray
    truth: str | None
    ingest_ms: int
    model_name: str = ""  # the served model that scores it ("" where only one is served)
    device_stats: np.ndarray | None = None  # [[means], [deviations]] of the device's earlier windows, when
    #                                         serving normalises per device (operators.device_normalisation)

    def __reduce__(self):
        # Flink pickles every window two or three times on its way to inference; raw bytes pickle
        # about 3x faster than the array's own reduce
        values = self.values
        return _rebuild_window, (self.device_id, self.start, self.end, values.tobytes(), values.dtype.str,
                                 values.shape, self.truth, self.ingest_ms, self.model_name, self.device_stats)


def _rebuild_window(device_id: str, start: int, end: int, raw: bytes, dtype: str, shape: tuple,
                    truth: str | None, ingest_ms: int, model_name: str = "",
                    device_stats: np.ndarray | None = None) -> Window:
    return Window(device_id, start, end, _array(raw, dtype, shape), truth, ingest_ms, model_name, device_stats)


def _array(raw: bytes, dtype: str, shape: tuple) -> np.ndarray:
    """A writable array from ``ndarray.tobytes()`` output."""
    return np.frombuffer(bytearray(raw), dtype).reshape(shape)


def majority_label(labels: list) -> str | None:
    """A window's ground truth: its samples' most common label (the earliest of equals), or None when
    any sample has none.

    >>> majority_label(["a", "b", "b"]), majority_label(["a", None])
    ('b', None)
    """
    first = labels[0] if labels else None
    if labels.count(first) == len(labels):  # the usual window: one label throughout, or none at all
        return first
    return None if None in labels else Counter(labels).most_common(1)[0][0]


def _ring_run(ring: np.ndarray, start: int, count: int) -> tuple[np.ndarray, ...]:
    """``count`` consecutive slots of a ring from ``start`` on, as one or two slices (it may wrap around).

    >>> [a.tolist() for a in _ring_run(np.arange(5), 3, 4)]
    [[3, 4], [0, 1]]
    """
    if start + count <= len(ring):
        return (ring[start:start + count],)
    return ring[start:], ring[:start + count - len(ring)]


@dataclass(slots=True)
class UnusableReading:
    """A reading the windower could not use, and why."""

    reading: SensorReading
    reason: str


@dataclass
class DeviceState:
    """Everything the windower keeps for one device; small and picklable (Flink keyed state).

    Flink pickles it after every reading and unpickles it before the next, so it pickles its
    two arrays as raw bytes (about 3x faster than the default).

    >>> import pickle
    >>> state = SlidingWindower(4, 1, 2).new_state()
    >>> state.count, state.device_id = 3, "d1"
    >>> copy = pickle.loads(pickle.dumps(state))
    >>> copy.count, copy.device_id, copy.ring.shape, copy.ring.flags.writeable
    (3, 'd1', (4, 2), True)
    """

    ring: np.ndarray
    ts: np.ndarray
    labels: list
    count: int = 0
    last_ts: int | None = None
    next_seq: int | None = None
    pending: list = field(default_factory=list)  # heap of (order key, ts, values, label, ingest)
    pending_keys: set = field(default_factory=set)
    max_ts: int | None = None
    device_id: str = ""
    late: int = 0
    gaps: int = 0
    resets: int = 0
    last_seen_ms: int | None = None  # the job's clock when the device's newest reading arrived
    expiry_check_ms: int | None = None  # when the job checks next whether the device went idle for good
    model_name: str = ""  # the served model whose windows this device's readings make
    input_stats: object = None  # the device's input statistics (operators.device_normalisation.InputStats)

    def __reduce__(self):
        ring, ts = self.ring, self.ts
        return _rebuild_device_state, (ring.tobytes(), ring.dtype.str, ring.shape, ts.tobytes(), ts.dtype.str,
                                       tuple(getattr(self, name) for name in _DEVICE_STATE_REST))


_DEVICE_STATE_REST = ("labels", "count", "last_ts", "next_seq", "pending", "pending_keys", "max_ts", "device_id",
                      "late", "gaps", "resets", "last_seen_ms", "expiry_check_ms",
                      "model_name", "input_stats")  # new fields last: old pickles load


def _rebuild_device_state(ring: bytes, ring_dtype: str, ring_shape: tuple, ts: bytes, ts_dtype: str,
                          rest: tuple) -> DeviceState:
    return DeviceState(_array(ring, ring_dtype, ring_shape), _array(ts, ts_dtype, (-1,)), *rest)


if tuple(f.name for f in fields(DeviceState))[2:] != _DEVICE_STATE_REST:
    raise TypeError("DeviceState's fields changed: update _DEVICE_STATE_REST (their order after ring and ts)")


class SlidingWindower:
    """Cuts each device's readings into windows of ``length`` every ``stride`` readings."""

    def __init__(self, length: int, stride: int, n_channels: int, max_out_of_order_ms: int = 0,
                 max_seq_gap_buffer: int = 32, reset_gap_ms: int = 0, seq_gap_timeout_ms: int = 1000,
                 max_seq_jump: int = 0) -> None:
        if length < 1 or stride < 1:
            raise ValueError("length and stride must be >= 1")
        self.length = length
        self.stride = stride
        self.n_channels = n_channels
        self.max_out_of_order_ms = max_out_of_order_ms
        self.max_seq_gap_buffer = max_seq_gap_buffer
        self.reset_gap_ms = reset_gap_ms
        self.seq_gap_timeout_ms = seq_gap_timeout_ms
        self.max_seq_jump = max_seq_jump

    def idle(self, state: DeviceState, now_ms: int, idle_ms: int) -> bool:
        """True when the newest reading held back (waiting for a gap to fill) arrived ``idle_ms`` ago or more."""
        return bool(state.pending) and now_ms - max(item[4] for item in state.pending) >= idle_ms

    @staticmethod
    def touch(state: DeviceState, now_ms: int, expiry_ms: int) -> int | None:
        """Note that the device was seen at ``now_ms``; returns when to check for expiry if a check must
        be scheduled (rounded up to a tenth of ``expiry_ms``, so an active device schedules about ten
        checks per expiry period, not one per reading), else None.

        >>> state = SlidingWindower(2, 1, 1).new_state()
        >>> SlidingWindower.touch(state, 1_000, 60_000), SlidingWindower.touch(state, 2_000, 60_000)
        (66000, None)
        """
        state.last_seen_ms = now_ms
        if not expiry_ms:
            return None
        step = max(1000, expiry_ms // 10)
        check = -(-(now_ms + expiry_ms) // step) * step
        if state.expiry_check_ms is not None and state.expiry_check_ms >= now_ms + expiry_ms:
            return None
        state.expiry_check_ms = check
        return check

    @staticmethod
    def expired(state: DeviceState, now_ms: int, expiry_ms: int) -> bool:
        """True when the device has sent nothing for ``expiry_ms`` (its state may then be dropped)."""
        return bool(expiry_ms) and state.last_seen_ms is not None and now_ms - state.last_seen_ms >= expiry_ms

    def new_state(self, model_name: str = "") -> DeviceState:
        return DeviceState(np.zeros((self.length, self.n_channels), np.float32),
                           np.zeros(self.length, np.int64), [None] * self.length, model_name=model_name)

    def add(self, state: DeviceState, reading: SensorReading, ingest_ms: int
            ) -> tuple[list[Window], list[UnusableReading]]:
        """Take one reading; return the windows it completes and anything refused."""
        state.device_id = reading.device_id
        if reading.seq is not None:
            return self._add_sequenced(state, reading, ingest_ms)
        return self._add_timestamped(state, reading, ingest_ms)

    # ordering by sequence number
    def _add_sequenced(self, state: DeviceState, reading: SensorReading, ingest_ms: int):
        seq = reading.seq
        if state.next_seq is None:
            state.next_seq = seq
        if seq == state.next_seq and not state.pending:  # the common case: in order, nothing held back
            state.next_seq = seq + 1
            windows: list[Window] = []
            self._commit(state, reading.ts, reading.values, reading.label, ingest_ms, windows)
            return windows, []
        silent = (self.reset_gap_ms and state.last_ts is not None and not state.pending
                  and reading.ts - state.last_ts > self.reset_gap_ms)
        if silent and seq != state.next_seq:
            state.next_seq = seq  # after a silence a device may start a new sequence (a reboot, a new counter)
        jump = seq - state.next_seq
        if self.max_seq_jump and jump > self.max_seq_jump:
            return [], [UnusableReading(reading, f"seq: {seq} jumps {jump} ahead of the next expected "
                                                 f"{state.next_seq} (at most {self.max_seq_jump} allowed)")]
        if seq < state.next_seq or seq in state.pending_keys:
            state.late += 1
            return [], [UnusableReading(reading, f"late or duplicate: seq {seq} already used "
                                           f"(next expected {state.next_seq})")]
        heapq.heappush(state.pending, (seq, reading.ts, reading.values, reading.label, ingest_ms))
        state.pending_keys.add(seq)
        windows = []
        self._drain_sequenced(state, windows)
        if state.pending:
            oldest_ts = min(item[1] for item in state.pending)
            if (len(state.pending) > self.max_seq_gap_buffer
                    or reading.ts - oldest_ts > self.seq_gap_timeout_ms):
                first = state.pending[0][0]
                state.gaps += first - state.next_seq
                state.next_seq = first
                self._drain_sequenced(state, windows)
        return windows, []

    def _drain_sequenced(self, state: DeviceState, windows: list[Window]) -> None:
        while state.pending and state.pending[0][0] == state.next_seq:
            seq, ts, values, label, ingest = heapq.heappop(state.pending)
            state.pending_keys.discard(seq)
            state.next_seq = seq + 1
            self._commit(state, ts, values, label, ingest, windows)

    # ordering by timestamp
    def _add_timestamped(self, state: DeviceState, reading: SensorReading, ingest_ms: int):
        ts = reading.ts
        if (state.last_ts is not None and ts <= state.last_ts) or ts in state.pending_keys:
            state.late += 1
            return [], [UnusableReading(reading, f"late or duplicate: ts {ts} is not after the last "
                                           f"used reading ({state.last_ts})")]
        heapq.heappush(state.pending, (ts, ts, reading.values, reading.label, ingest_ms))
        state.pending_keys.add(ts)
        state.max_ts = ts if state.max_ts is None else max(state.max_ts, ts)
        watermark = state.max_ts - self.max_out_of_order_ms
        windows: list[Window] = []
        while state.pending and state.pending[0][0] <= watermark:
            key, ts_, values, label, ingest = heapq.heappop(state.pending)
            state.pending_keys.discard(key)
            self._commit(state, ts_, values, label, ingest, windows)
        return windows, []

    def _commit(self, state: DeviceState, ts: int, values, label, ingest: int,
                windows: list[Window]) -> None:
        if self.reset_gap_ms and state.last_ts is not None and ts - state.last_ts > self.reset_gap_ms:
            state.count = 0
            state.resets += 1
        state.last_ts = ts
        slot = state.count % self.length
        state.ring[slot] = values
        state.ts[slot] = ts
        state.labels[slot] = label
        state.count += 1
        if state.count >= self.length and (state.count - self.length) % self.stride == 0:
            oldest = state.count % self.length  # the ring's oldest slot, the one written next
            labels = state.labels
            truth = majority_label(labels[oldest:] + labels[:oldest])
            values = np.concatenate((state.ring[oldest:], state.ring[:oldest]))
            windows.append(Window(state.device_id, int(state.ts[oldest]), int(state.ts[oldest - 1]), values,
                                  truth, ingest, state.model_name))

    def add_block(self, state: DeviceState, block: SampleBlock, ingest_ms: int
                  ) -> tuple[list[Window], list[UnusableReading]]:
        """Take a block of samples (``schemas.blocks.SampleBlock``): all of it, or none of it when it
        overlaps what the device already sent (one refusal with the reason). In order and with nothing
        held back, its windows are cut with array operations; otherwise sample by sample."""
        state.device_id = block.device_id
        late = self._late_block(state, block)
        if late is not None:
            state.late += len(block)
            return [], [UnusableReading(block, late)]
        if not self._in_order(state, block):
            windows: list[Window] = []
            refusals: list[UnusableReading] = []  # none expected: _late_block ruled them out
            for reading in block.readings():
                done, refused = self.add(state, reading, ingest_ms)
                windows += done
                refusals += refused
            return windows, refusals
        return self._commit_block(state, block, ingest_ms), []

    def continues(self, before: SampleBlock, block: SampleBlock) -> bool:
        """Whether ``block`` takes the fast path right after ``before`` was used on it: it carries on its
        sequence (or neither has one, and readings are not reordered), starts after it, and no silence
        before it or inside it resets the window. :meth:`add_blocks` windows such a run at once."""
        if (before.seq is None) != (block.seq is None):
            return False
        if block.seq is None:
            if self.max_out_of_order_ms:
                return False
        elif block.seq != before.seq + len(before):
            return False
        gap = int(block.ts[0]) - int(before.ts[-1])
        if gap <= 0:
            return False
        return not (self.reset_gap_ms and (gap > self.reset_gap_ms or self._silence_inside(block)))

    def takes_on(self, state: DeviceState, block: SampleBlock) -> bool:
        """Whether :meth:`add_block` would append ``block`` on the fast path: not late, and in order with
        nothing held back."""
        return self._late_block(state, block) is None and self._in_order(state, block)

    def add_blocks(self, state: DeviceState, blocks: list[tuple[SampleBlock, int]]) -> list[Window]:
        """Take a run of ``(block, ingest_ms)`` whose first block :meth:`takes_on` and in which each block
        :meth:`continues` the one before, in one pass: the same windows and state as :meth:`add_block` on each
        in turn (each window keeps the ``ingest_ms`` of the block its last sample came in)."""
        first = blocks[0][0]
        parts = [block for block, _ in blocks]
        labels = None
        if any(block.labels for block in parts):
            labels = [label for block in parts for label in (block.labels or [None] * len(block))]
        joined = SampleBlock(first.device_id, np.concatenate([b.ts for b in parts]),
                             np.concatenate([b.values for b in parts]), first.seq, labels, first.device_type)
        ends = list(accumulate(map(len, parts)))  # the joined block's sample index after each part's last
        return self.add_run(state, joined, ends, [ingest for _, ingest in blocks])

    def add_run(self, state: DeviceState, block: SampleBlock, ends: list[int], ingests: list[int]) -> list[Window]:
        """Take blocks already joined into one (``schemas.blocks.decode_block_run``) that :meth:`takes_on`:
        ``ends`` is the sample index after each part's last, ``ingests`` each part's ``ingest_ms``. The same
        windows and state as :meth:`add_blocks` on the parts."""
        state.device_id = block.device_id
        return self._commit_block(state, block, ingests[0], (ends, ingests))

    def _late_block(self, state: DeviceState, block: SampleBlock) -> str | None:
        n = len(block)
        if block.seq is not None:
            jump = block.seq - state.next_seq if state.next_seq is not None else 0
            if self.max_seq_jump and jump > self.max_seq_jump and not self._restarts(state, block):
                return (f"seq: block starts at {block.seq}, {jump} ahead of the next expected {state.next_seq} "
                        f"(at most {self.max_seq_jump} allowed)")
            if state.next_seq is not None and block.seq < state.next_seq and not self._restarts(state, block):
                return (f"late or duplicate: block of seq {block.seq}..{block.seq + n - 1} overlaps what was "
                        f"already used (next expected {state.next_seq})")
            if state.pending_keys and any(block.seq + k in state.pending_keys for k in range(n)):
                return f"duplicate: block of seq {block.seq}..{block.seq + n - 1} overlaps readings held back"
            return None
        first = int(block.ts[0])
        if state.last_ts is not None and first <= state.last_ts:
            return (f"late or duplicate: block of ts {first}..{int(block.ts[-1])} is not after the last used "
                    f"reading ({state.last_ts})")
        if state.pending_keys and any(int(t) in state.pending_keys for t in block.ts):
            return f"duplicate: block of ts {first}..{int(block.ts[-1])} overlaps readings held back"
        return None

    def _restarts(self, state: DeviceState, block: SampleBlock) -> bool:
        """After a silence a device may start a new sequence (as the per-sample path allows)."""
        return bool(self.reset_gap_ms and state.last_ts is not None and not state.pending
                    and int(block.ts[0]) - state.last_ts > self.reset_gap_ms)

    def _in_order(self, state: DeviceState, block: SampleBlock) -> bool:
        """The fast path's conditions: it continues the device's stream exactly, nothing is held back,
        and no silence inside it or before it resets the window."""
        if state.pending:
            return False
        if block.seq is not None:
            if state.next_seq is not None and block.seq != state.next_seq:
                return False
        elif self.max_out_of_order_ms:
            return False
        if self.reset_gap_ms:
            if state.last_ts is not None and int(block.ts[0]) - state.last_ts > self.reset_gap_ms:
                return False
            if self._silence_inside(block):
                return False
        return True

    def _silence_inside(self, block: SampleBlock) -> bool:
        """Whether two of the block's samples lie more than ``reset_gap_ms`` apart. Its times increase, so no gap
        exceeds its whole span: most blocks need no look at each gap."""
        return (int(block.ts[-1]) - int(block.ts[0]) > self.reset_gap_ms
                and np.diff(block.ts).max() > self.reset_gap_ms)

    def _commit_block(self, state: DeviceState, block: SampleBlock, ingest_ms: int,
                      ingests: tuple[list[int], list[int]] | None = None) -> list[Window]:
        """Append the block to the device's ring and cut every window it completes, as arrays (slices of the
        ring rather than index arrays: a block of 10 samples costs a few numpy calls, not a dozen). ``ingests``:
        for a block joined from several, the sample index after each part's last and each part's ``ingest_ms``."""
        length, stride, n, first = self.length, self.stride, len(block), state.count
        held = min(first, length - 1)  # earlier samples the first windows reach back to
        block_labels = block.labels or [None] * n
        block_ts = block.ts.tolist()
        end = max(first, length - 1)
        end += (stride - (end + 1 - length) % stride) % stride  # the first window end at or after it
        windows = []
        if end < first + n:  # the block completes windows: they may reach back into the ring
            if held:
                start = (first - held) % length  # the ring's slot of the oldest held sample
                values = np.concatenate((*_ring_run(state.ring, start, held), block.values))
                labels = (state.labels[start:] + state.labels[:start])[:held] + block_labels
            else:
                values, labels = block.values, block_labels
            offset = first - held  # global sample index of values[0]
            ring_ts = state.ts
            for e in range(end, first + n, stride):
                lo = e - length + 1  # global sample index of the window's first sample
                begins = block_ts[lo - first] if lo >= first else int(ring_ts[lo % length])
                if ingests is not None:  # the part the window's last sample came in
                    ingest_ms = ingests[1][bisect_right(ingests[0], e - first)]
                windows.append(Window(state.device_id, begins, block_ts[e - first],
                                      values[lo - offset:lo - offset + length].copy(),
                                      majority_label(labels[lo - offset:lo - offset + length]), ingest_ms,
                                      state.model_name))
        tail = min(n, length)
        at = (first + n - tail) % length  # the slot the block's last ``tail`` samples start at
        split = min(tail, length - at)
        for ring, new in ((state.ring, block.values[n - tail:]), (state.ts, block.ts[n - tail:]),
                          (state.labels, block_labels[n - tail:])):  # arrays and the label list alike
            ring[at:at + split] = new[:split]
            if split < tail:  # it wraps around the ring's end
                ring[:tail - split] = new[split:]
        state.count += n
        state.last_ts = block_ts[-1]
        state.max_ts = state.last_ts if state.max_ts is None else max(state.max_ts, state.last_ts)
        if block.seq is not None:
            state.next_seq = block.seq + n
        return windows

    def flush(self, state: DeviceState) -> list[Window]:
        """Use every held reading now (end of stream or idle device), skipping open gaps."""
        windows: list[Window] = []
        while state.pending:
            key, ts, values, label, ingest = heapq.heappop(state.pending)
            state.pending_keys.discard(key)
            if state.next_seq is not None and key > state.next_seq:
                state.gaps += key - state.next_seq
            if state.next_seq is not None:
                state.next_seq = key + 1
            self._commit(state, ts, values, label, ingest, windows)
        return windows
