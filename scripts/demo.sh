#!/usr/bin/env bash
# The main job, from a fresh checkout: install what is needed, train the iris demo model
# into ./.ml (the local stand-in for /opt/ml) with the real `train`, then serve it with the
# real `docker/serve` (nginx + gunicorn) on :8080 until Ctrl-C.
# The demo also shows the admin (off everywhere else): it is on at localhost:8080/admin/
# with a superuser whose password is printed once (random, unless
# DJANGO_SUPERUSER_PASSWORD is set), every request is sampled for drift, and a little
# traffic is sent, half of it with one feature shifted, for the model's drift page.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

scripts/bootstrap.sh run
export SAGEMAKER_BASE_DIR=${SAGEMAKER_BASE_DIR:-$PWD/.ml}
export SMSERVE_PYTHON=$PWD/.venv/bin/python
"$SMSERVE_PYTHON" manage.py demo_data
./train
port=${SAGEMAKER_BIND_TO_PORT:-8080}

export SMSERVE_ADMIN_ENABLED=${SMSERVE_ADMIN_ENABLED:-true}
export SMSERVE_ALLOWED_HOSTS=${SMSERVE_ALLOWED_HOSTS:-localhost,127.0.0.1}
export SMSERVE_CAPTURE_PERCENT=${SMSERVE_CAPTURE_PERCENT:-100}
export DJANGO_SUPERUSER_USERNAME=${DJANGO_SUPERUSER_USERNAME:-admin}
export DJANGO_SUPERUSER_EMAIL=${DJANGO_SUPERUSER_EMAIL:-admin@localhost}
password=${DJANGO_SUPERUSER_PASSWORD:-$("$SMSERVE_PYTHON" -c 'import secrets; print(secrets.token_urlsafe(12))')}
export DJANGO_SUPERUSER_PASSWORD=$password

docker/serve &
serve_pid=$!
trap 'kill -TERM "$serve_pid" 2>/dev/null || true; wait "$serve_pid"; exit 0' INT TERM
"$SMSERVE_PYTHON" manage.py demo_traffic --port "$port"
# serve makes the user once and leaves an existing one as it is: the password printed
# below is the one that works, also on a second run of the demo.
"$SMSERVE_PYTHON" manage.py shell --verbosity 0 -c '
import os
from django.contrib.auth import get_user_model
user = get_user_model().objects.get(username=os.environ["DJANGO_SUPERUSER_USERNAME"])
user.set_password(os.environ["DJANGO_SUPERUSER_PASSWORD"])
user.save()'
printf '%s\n' "demo: serving on port $port; try:" \
  "  curl -s -H 'Content-Type: text/csv' --data-binary '5.1,3.5,1.4,0.2' localhost:$port/invocations" \
  "demo: the admin is at http://localhost:$port/admin/ (user $DJANGO_SUPERUSER_USERNAME, password $password);" \
  "  open Trained models, the model, then its drift page." >&2
wait "$serve_pid"
