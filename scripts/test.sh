#!/usr/bin/env bash
# One command: set everything up, then run the unit, doctest and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
