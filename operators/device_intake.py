"""One device's messages in, its windows and dead letters out: the serving job's keyed intake.

The serving job hands :class:`DeviceIntake` a device's messages (one, or a group of them that crossed
into Python together) and the device's window state; each message is validated and windowed in order,
exactly as if it came alone, so one bad message in a group is its own dead letter (with its partition and
offset) and the others are used. With per-device input normalisation each window leaves with the
statistics of the device's earlier windows (:mod:`operators.device_normalisation`).

>>> from operators.model_routing import ServedModel
>>> intake = DeviceIntake.for_models([ServedModel("m", ("x",), 2, 1)])
>>> messages = [Message(0, i, 0, b'{"device_id": "d", "ts": %d, "values": [%d]}' % (i, i)) for i in range(3)]
>>> messages.insert(1, Message(0, 9, 0, b'{"device_id": "d", "ts": "soon", "values": [1]}'))
>>> out = intake.take("d", messages, None, now_ms=0)
>>> [(w.start, w.end) for w in out.windows], [(d.offset, d.field) for d in out.dead_letters]
([(0, 1), (1, 2)], [(9, 'ts')])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from operators.device_normalisation import DeviceNormaliser
from operators.model_routing import DeviceRouter, ServedModel
from operators.parse import ReadingParser, RoutedParser
from operators.windowing import DeviceState, SlidingWindower, Window
from schemas import DeadLetter
from schemas.blocks import SampleBlock


# A device's messages in a group are tried as one run when there are two or more holding this many bytes: below
# it the run's fixed cost (a few array operations) exceeds what it saves. Measured on the replayer's BasicMotions
# messages (6 channels, about 140 bytes a single reading, 800 a block of 10 samples), µs per message one by one /
# joined: a lone message 8.3/17.8 (single reading) and 27.8/33.3 (block of 10); two blocks of 10 27.0/22.8; four
# single readings 7.7/8.0, five 7.7/7.1, sixteen 7.3/4.1.
JOINED_MIN_BYTES = 640


class Message(NamedTuple):
    """One readings message and where it was read."""

    partition: int
    offset: int
    ingest_ms: int
    payload: bytes


@dataclass
class Intake:
    """What a device's messages gave: its state afterwards (``changed``: whether to store it), the windows
    they completed, dead letters (``late``: how many of them are readings behind what was used), and how
    many samples were used."""

    state: DeviceState | None
    changed: bool = False
    windows: list[Window] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    late: int = 0
    samples: int = 0


@dataclass
class _BlockRun:
    """Sample blocks of one device and model, each carrying on the one before, waiting to be windowed (with the
    messages they came in)."""

    model: str = ""
    blocks: list[SampleBlock] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)


class DeviceIntake:
    """Validates and windows each device's messages for the served ``models`` (``parser`` picks a model per
    reading, ``windowers`` cut its windows); ``normalisers`` (per model) learn each device's input statistics.
    A device's readings go to one model; after ``device_expiry_ms`` of silence (0: never) it may change."""

    def __init__(self, parser: RoutedParser, windowers: dict[str, SlidingWindower], default_model: str,
                 device_expiry_ms: int = 0, normalisers: dict[str, DeviceNormaliser] | None = None) -> None:
        self.parser, self.windowers = parser, windowers
        self.default_model, self.device_expiry_ms = default_model, device_expiry_ms
        self.normalisers = normalisers or {}
        # a device's two or more messages holding this many bytes are first tried as one run (None: never)
        self.joined_min_bytes: int | None = JOINED_MIN_BYTES

    @classmethod
    def for_models(cls, models: list[ServedModel], topic: str = "sensor-readings", normalise_after: int = 0,
                   halflife: int = 0) -> "DeviceIntake":
        """An intake with default limits (for examples and tests); with several models a reading's
        ``device_type`` names its model."""
        named = len(models) > 1
        router = DeviceRouter({m.name: m.name for m in models}) if named else DeviceRouter({}, [("*", models[0].name)])
        parser = RoutedParser({m.name: ReadingParser(m.channels, topic, model_name=m.name if named else None)
                               for m in models}, router)
        windowers = {m.name: SlidingWindower(m.window, m.stride, len(m.channels)) for m in models}
        normalisers = {m.name: DeviceNormaliser(normalise_after, halflife) for m in models} if normalise_after else None
        return cls(parser, windowers, models[0].name, 0, normalisers)

    def take(self, key: str, messages: list[Message], state: DeviceState | None, now_ms: int) -> Intake:
        """Validate and window ``messages`` of device ``key`` in order, starting from ``state``. Two or more
        messages holding ``joined_min_bytes`` are first tried as one run (:meth:`_take_joined`). Else sample
        blocks that carry on one another are windowed together (``SlidingWindower.add_blocks``: the same windows
        as one at a time, in one pass)."""
        if (self.joined_min_bytes is not None and len(messages) > 1
                and sum(len(message.payload) for message in messages) >= self.joined_min_bytes):
            joined = self._take_joined(key, messages, state, now_ms)
            if joined is not None:
                return joined
        out = Intake(state)
        run = _BlockRun()
        for message in messages:
            partition, offset, ingest_ms, payload = message
            parsed = self.parser.parse(payload, partition, offset, now_ms)
            if isinstance(parsed, DeadLetter):
                self._window(out, run)
                out.dead_letters.append(parsed)
                continue
            model, reading = parsed
            if reading.device_id != key:  # e.g. a duplicated "device_id" field
                self._window(out, run)
                out.dead_letters.append(self.parser.dead_letter(
                    model, payload, partition, offset, "device_id: ambiguous (appears more than once)", "device_id"))
                continue
            usable = self._device_state(model, out.state)
            if isinstance(usable, str):
                self._window(out, run)
                out.dead_letters.append(self.parser.dead_letter(model, payload, partition, offset, usable,
                                                                "device_type"))
                continue
            out.state, out.changed = usable, True
            windower = self.windowers[model]
            if isinstance(reading, SampleBlock):
                out.samples += len(reading)
                if not (run.blocks and run.model == model and windower.continues(run.blocks[-1], reading)):
                    self._window(out, run)
                    run.model = model
                run.blocks.append(reading)
                run.messages.append(message)
                continue
            self._window(out, run)
            out.samples += 1
            done, rejections = windower.add(usable, reading, ingest_ms)
            if done:
                out.windows.extend(self.with_stats(usable, done, model))
            if rejections:
                self._use(out, model, [], rejections, message, reading.seq is not None)
        self._window(out, run)
        return out

    def _take_joined(self, key: str, messages: list[Message], state: DeviceState | None, now_ms: int
                     ) -> Intake | None:
        """The usual case at once: every message a sample block or single reading of the device that carries on
        the one before, and the first carries on the device's stream (``RoutedParser.parse_run``: the samples
        checked and joined in a few array operations instead of message by message). None for anything else:
        then each message is taken alone, and what is wrong is named."""
        parsed = self.parser.parse_run([message.payload for message in messages], now_ms)
        if parsed is None:
            return None
        model, (block, ends) = parsed
        if block.device_id != key:
            return None
        usable = self._device_state(model, state)
        if isinstance(usable, str) or not self.windowers[model].takes_on(usable, block):
            return None
        out = Intake(usable, True, samples=len(block))
        self._use(out, model, self.windowers[model].add_run(usable, block, ends,
                                                            [message.ingest_ms for message in messages]))
        return out

    def _window(self, out: Intake, run: "_BlockRun") -> None:
        """Window the blocks gathered in ``run`` (if any) and empty it: in one pass when its first block takes
        the fast path, else one by one (each refusal names its own message)."""
        if not run.blocks:
            return
        windower = self.windowers[run.model]
        if len(run.blocks) > 1 and windower.takes_on(out.state, run.blocks[0]):
            self._use(out, run.model, windower.add_blocks(
                out.state, [(block, message.ingest_ms) for block, message in zip(run.blocks, run.messages)]))
        else:
            for block, message in zip(run.blocks, run.messages):
                done, rejections = windower.add_block(out.state, block, message.ingest_ms)
                self._use(out, run.model, done, rejections, message, block.seq is not None)
        run.blocks, run.messages = [], []

    def _use(self, out: Intake, model: str, windows: list[Window], rejections: list | None = None,
             message: Message | None = None, sequenced: bool = False) -> None:
        """A message's (or a run's) windows, given their input statistics, and its refusals as dead letters."""
        out.windows.extend(self.with_stats(out.state, windows, model))
        for rejection in rejections or ():
            out.late += 1
            out.dead_letters.append(self.parser.dead_letter(
                model, message.payload, message.partition, message.offset, rejection.reason,
                "seq" if sequenced else "ts", "window"))

    def with_stats(self, state: DeviceState, windows: list[Window], model: str) -> list[Window]:
        """``windows`` of the device, each given the input statistics of the device's windows before it (when
        ``model``'s inputs are normalised per device), which then learn from it."""
        normaliser = self.normalisers.get(model)
        if normaliser is None:
            return windows
        for window in windows:
            window.device_stats, state.input_stats = normaliser.step(state.input_stats, window.values)
        return windows

    def _device_state(self, model: str, state: DeviceState | None) -> DeviceState | str:
        """The device's window state (``state``, the one held) for ``model``'s readings, or why the reading
        cannot use it."""
        if state is None:
            return self.windowers[model].new_state(model)
        if not state.model_name:  # kept by a job that served one model: registry.model_name
            state.model_name = model if len(self.windowers) == 1 else self.default_model
        if state.model_name != model:
            expiry_s = self.device_expiry_ms // 1000
            return (f"device_type: device {state.device_id!r} sends readings for model {state.model_name}; this one "
                    f"is for {model} (a device's readings go to one model"
                    + (f"; after {expiry_s} s of silence it may change)" if expiry_s else ")"))
        return state
