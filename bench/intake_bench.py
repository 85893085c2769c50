"""What decoding a sample block costs, per path, measured in one run (no broker, no Flink).

The replayer's blocks of BasicMotions (6 channels) at several sizes, decoded as the serving job's parser does:
values checked value by value in Python (``no_bools=False``: any payload) against NumPy telling their types
(``no_bools=True``: a payload without ``true``/``false``, as the parser finds most), and a block's times from
``interval_ms`` given as a float (rounded step by step) against whole milliseconds (``np.arange``), and a device's
``--run`` consecutive blocks checked and joined at once (``schemas.blocks.decode_block_run``, what the job's intake
tries first for each device's messages in a group). Best of seven timeit repeats, microseconds per block, and their
ratios.

    .venv/bin/python bench/intake_bench.py [--sizes 10,25,50] [--blocks 2000] [--run 8]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, save  # noqa: E402
from model.datasets import load_basic_motions  # noqa: E402
from model.spec import BASIC_MOTIONS_CHANNELS  # noqa: E402
from operators.replay import BlockPacker, ReadingStream  # noqa: E402
from schemas.blocks import BlockRun, SampleBlock, decode_block_run  # noqa: E402


def replayed_blocks(size: int, count: int) -> list[dict]:
    """``count`` decoded payloads of ``size``-sample blocks from 64 replayed devices."""
    stream, packer, out = ReadingStream(load_basic_motions("test"), 64, 0), BlockPacker(size), []
    while len(out) < count:
        block = packer.add({**next(stream), "ts": 1_700_000_000_000 + len(out)})
        if block is not None:
            out.append(orjson.loads(orjson.dumps(block)))
    return out


def per_block_us(decode, objs: list[dict]) -> float:
    return min(timeit.repeat(lambda: [decode(o) for o in objs], number=1, repeat=7)) / len(objs) * 1e6


def device_runs(objs: list[dict], length: int) -> list[list[dict]]:
    """The blocks of each device in runs of ``length`` consecutive ones (as a group of the serving job's
    sharded layout holds a busy device's messages)."""
    by_device: dict[str, list[dict]] = {}
    for obj in objs:
        by_device.setdefault(obj["device_id"], []).append(obj)
    return [blocks[at:at + length] for blocks in by_device.values() for at in range(0, len(blocks), length)]


def joined_run(run: list[dict], channels: list[str]) -> BlockRun:
    """A device's blocks checked and joined at once, as the serving job's intake tries them first."""
    joined = decode_block_run(run, channels, 1e9)
    if joined is None:
        raise RuntimeError("a run of the replayer's blocks was not taken at once")
    return joined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,25,50")
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--run", type=int, default=8, help="blocks of one device checked and joined at once")
    args = parser.parse_args()
    channels, rows = list(BASIC_MOTIONS_CHANNELS), []
    for size in (int(s) for s in args.sizes.split(",")):
        objs = replayed_blocks(size, args.blocks)
        checked = per_block_us(lambda o: SampleBlock.from_dict(o, channels, 1e9, no_bools=False), objs)
        typed = per_block_us(lambda o: SampleBlock.from_dict(o, channels, 1e9, no_bools=True), objs)
        spaced = [{**{k: v for k, v in o.items() if k != "ts"}, "ts": o["ts"][0]} for o in objs]
        floats = per_block_us(lambda o: SampleBlock.from_dict({**o, "interval_ms": 1.0}, channels, 1e9, no_bools=True),
                              spaced)
        whole = per_block_us(lambda o: SampleBlock.from_dict({**o, "interval_ms": 1}, channels, 1e9, no_bools=True),
                             spaced)
        runs = device_runs(objs, args.run)
        joined = min(timeit.repeat(lambda: [joined_run(run, channels) for run in runs], number=1, repeat=7)) \
            / sum(map(len, runs)) * 1e6
        rows.append([size, checked, typed, typed / checked, floats, whole, whole / floats, joined, joined / typed])
    header = ["samples per block", "values checked in Python (us)", "NumPy tells the types (us)", "ratio",
              "interval_ms 1.0 (us)", "interval_ms 1 (us)", "ratio",
              f"a device's {args.run} blocks joined at once (us per block)", "joined / NumPy tells the types"]
    print_table("Decoding a block (per block, best of 7)", header, rows)
    save("intake", {"header": header, "rows": rows})


if __name__ == "__main__":
    main()
