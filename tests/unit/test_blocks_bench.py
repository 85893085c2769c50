"""The blocks benchmark's measure of the sharded operator alone (no Flink, no Kafka) scores what the job would."""

import math

import pytest

from bench.blocks_bench import DEVICES, operator_us_per_sample
from bench.serving_bench import expected_windows


@pytest.mark.parametrize("size", [1, 10])
def test_the_operator_alone_scores_every_window_of_the_replayed_messages(trained_registry, size):
    samples = 12_800
    got = operator_us_per_sample(size, str(trained_registry), stride=8, samples=samples)
    assert got["predictions"] == expected_windows(samples, DEVICES, 32, 8)
    assert math.isfinite(got["operator"]) and got["operator"] > got["model"] > 0
