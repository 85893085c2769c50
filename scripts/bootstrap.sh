#!/usr/bin/env bash
# Set-up on a fresh machine: virtual environment, the project and its pinned dependencies,
# a JDK for Flink's helpers, Chromium for the browser tests, the verified Flink Kafka connector jars, and model version 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
EXTRAS="${SENSORLOOP_EXTRAS:-test,bench,browser-test,s3}"

if ! command -v java >/dev/null || ! command -v javac >/dev/null; then
  echo "installing a JDK (Flink runs on Java; javac builds sensorloop's two small connector helpers)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq openjdk-17-jdk-headless >/dev/null
  else
    echo "need java and javac 11+ on PATH (e.g. apt-get install openjdk-17-jdk-headless)" >&2; exit 1
  fi
fi
if [[ "$EXTRAS" == *browser-test* ]] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium for the labeling page's browser tests"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium not installed: the browser tests will be skipped (apt-get install chromium)" >&2
  fi
fi
if [[ "$EXTRAS" == *test* ]] && ! command -v docker-compose >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's docker-compose client to validate infra/compose (no engine needed)"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose) >/dev/null || echo "docker-compose not installed" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
.venv/bin/sensorloop setup "$@"
