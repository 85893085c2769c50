#!/usr/bin/env bash
# One command: set everything up, then run broker + Flink serving job + replayed real sensor data.
# Extra arguments go to `sensorloop demo` (e.g. --duration 120 --rate 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/sensorloop demo "$@"
