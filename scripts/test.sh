#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: install what is needed (system packages as
# root, the venv), lint, run the suite on SQLite, then again on a throwaway PostgreSQL.
# Extra arguments go to both pytest runs (e.g. -x, -k NAME, -m "not image").
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

scripts/bootstrap.sh test
export PATH="$PWD/.venv/bin:$PATH"

echo "== lint" >&2
ruff check .
ruff format --check .

echo "== tests on SQLite" >&2
pytest "$@"

echo "== tests on PostgreSQL" >&2
database_url=$(scripts/postgres.sh start)
trap 'scripts/postgres.sh stop >/dev/null' EXIT
# The image test builds and runs a container with its own SQLite, and the multi-host
# training tests record their runs in SQLite of their own: once is enough for both.
DATABASE_URL=$database_url pytest -m "not image and not slow" "$@"
