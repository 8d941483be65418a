#!/usr/bin/env bash
# The main job, from a fresh checkout: install what is needed, train the iris demo model
# into ./.ml (the local stand-in for /opt/ml) with the real `train`, then serve it with the
# real `docker/serve` (nginx + gunicorn) on :8080 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

scripts/bootstrap.sh run
export SAGEMAKER_BASE_DIR=${SAGEMAKER_BASE_DIR:-$PWD/.ml}
export SMSERVE_PYTHON=$PWD/.venv/bin/python
"$SMSERVE_PYTHON" manage.py demo_data
./train
port=${SAGEMAKER_BIND_TO_PORT:-8080}
printf '%s\n' "demo: serving on port $port; try:" \
  "  curl -s -H 'Content-Type: text/csv' --data-binary '5.1,3.5,1.4,0.2' localhost:$port/invocations" >&2
exec docker/serve
