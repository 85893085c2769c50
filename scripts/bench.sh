#!/usr/bin/env bash
# Benchmarks: inference throughput vs batch size, online learning vs river, label -> serving latency of the
# closed loop, the embedded broker alone, the delivery modes (latency and a crash), then the end-to-end
# serving benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python bench/inference_bench.py
.venv/bin/python bench/learning_bench.py
.venv/bin/python bench/synthetic_learning_bench.py
.venv/bin/python bench/label_latency_bench.py
.venv/bin/python bench/broker_bench.py
.venv/bin/python bench/delivery_bench.py
.venv/bin/python bench/blocks_bench.py
.venv/bin/python bench/serving_bench.py "$@"
