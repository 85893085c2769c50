#!/usr/bin/env bash
# One command: set everything up, then run the unit, doctest and end-to-end tests.
# Two pytest workers by default (SENSORLOOP_TEST_WORKERS; 0: one process), each test file on one worker,
# one thread per process for torch and BLAS (two workers on two cores must not oversubscribe them);
# then, alone, the tests marked `serial` (demos that run for a fixed time and must not share the CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# each local job's JVM keeps its scratch files under $TMPDIR/sensorloop-jvm-<uid> (removed when it is gone);
# brokers, checkpoints and logs go to pytest's temporary folders: say so early when the disk is nearly full
free_kb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt 2000000 ]; then
  echo "warning: only $((free_kb / 1024)) MB free under ${TMPDIR:-/tmp}; the tests use about 1 GB at their peak" >&2
fi
workers="${SENSORLOOP_TEST_WORKERS:-2}"
if [ "$workers" -le 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" \
  MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
parallel=0
.venv/bin/python -m pytest -n "$workers" --dist loadfile -m "not serial" "$@" || parallel=$?
alone=0
.venv/bin/python -m pytest -m serial "$@" || alone=$?
for status in "$parallel" "$alone"; do  # 5: that part selected no test (a path or -k given)
  if [ "$status" != 0 ] && [ "$status" != 5 ]; then
    exit "$status"
  fi
done
if [ "$parallel" = 5 ] && [ "$alone" = 5 ]; then
  exit 5
fi
