#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: install what is needed (system packages as
# root, the venv), lint, run the suite on SQLite, then its database tests again on a
# throwaway PostgreSQL.
# Extra arguments go to both pytest runs (e.g. -x, -k NAME, -m "not image").
#
# Both runs are spread over SMSERVE_TEST_WORKERS pytest-xdist processes (default 2, one per
# core of the CI machine): tests use free ports and temporary directories of their own, and
# tests/conftest.py keeps on one worker the tests of a module that share a server, a
# trained model or the container image. Each phase's seconds are printed, and the total;
# a run over SMSERVE_TEST_BUDGET seconds (default 1500: the whole command's last measured
# run, about 1,100 s on 2 cores, plus a third for a busier machine) fails, saying so, even when every
# test passed. The budget assumes what a CI machine keeps between runs: the apt
# packages, pip's cache, and the image's base, wheels and layers under /var/tmp.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

budget=${SMSERVE_TEST_BUDGET:-1500}
workers=${SMSERVE_TEST_WORKERS:-2}
started=$SECONDS
timings=()
current=
current_start=0
database_url=

finish() {
  local status=$?
  if [ -n "$database_url" ]; then
    scripts/postgres.sh stop >/dev/null || true
  fi
  local total=$((SECONDS - started))
  if [ -n "$current" ]; then
    timings+=("$current: $((SECONDS - current_start)) s (failed, exit $status)")
  fi
  {
    echo "== seconds per phase"
    printf '   %s\n' "${timings[@]}"
    echo "   total: $total s (budget $budget s)"
  } >&2
  if [ "$status" = 0 ] && [ "$total" -gt "$budget" ]; then
    echo "== FAILED: the suite took $total s, over its budget of $budget s" \
      "(SMSERVE_TEST_BUDGET); see the slowest tests above" >&2
    exit 1
  fi
}
trap finish EXIT

phase() {  # phase NAME COMMAND...: run COMMAND, record its seconds under NAME
  current=$1
  current_start=$SECONDS
  shift
  echo "== $current" >&2
  "$@"
  timings+=("$current: $((SECONDS - current_start)) s")
  current=
}

phase bootstrap scripts/bootstrap.sh test
export PATH="$PWD/.venv/bin:$PATH"

lint() {
  ruff check .
  ruff format --check .
  # The annotations checked (pyproject.toml's [tool.mypy]: modelapp, smserve, gunicorn.conf.py).
  mypy
}
phase lint lint

# In collection order (tests/conftest.py puts the longest groups first), not by size.
parallel=(-n "$workers" --dist loadgroup --no-loadscope-reorder)
phase "tests on SQLite" pytest "${parallel[@]}" "$@"

# Again, on PostgreSQL, the tests that use the suite's database (marker ``database``: the
# admin and its lockout, the statistics, the training and model records); the others never
# touch it, and they ran above. The image test builds a container with its own SQLite, and
# the multi-host training tests record in SQLite of their own.
postgres() {
  database_url=$(scripts/postgres.sh start)
  DATABASE_URL=$database_url pytest "${parallel[@]}" \
    -m "database and not image and not slow" "$@"
}
phase "tests on PostgreSQL" postgres "$@"
