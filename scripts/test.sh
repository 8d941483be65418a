#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: install what is needed (system packages as
# root, the venv), lint, run the suite on SQLite, then its database tests again on a
# throwaway PostgreSQL.
# Extra arguments go to both pytest runs (e.g. -x, -k NAME, -m "not image").
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

scripts/bootstrap.sh test
export PATH="$PWD/.venv/bin:$PATH"

echo "== lint" >&2
ruff check .
ruff format --check .
# The annotations checked (pyproject.toml's [tool.mypy]: modelapp, smserve, gunicorn.conf.py).
mypy

echo "== tests on SQLite" >&2
pytest "$@"

echo "== tests on PostgreSQL" >&2
database_url=$(scripts/postgres.sh start)
trap 'scripts/postgres.sh stop >/dev/null' EXIT
# Again, on PostgreSQL, the tests that read or write the database (marker ``database``:
# the admin, the statistics, the training and model records, the connection handling);
# the others never touch it, and they ran above. The image test builds a container with
# its own SQLite, and the multi-host training tests record in SQLite of their own.
DATABASE_URL=$database_url pytest -m "database and not image and not slow" "$@"
