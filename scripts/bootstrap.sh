#!/usr/bin/env bash
# Installs what smserve needs on Debian 12 with Python 3.11: system packages through apt
# (when run as root) and a virtualenv in .venv with the pinned Python packages.
#   scripts/bootstrap.sh run    what training and serving need
#   scripts/bootstrap.sh test   that, plus the test suite's tools and servers
#   scripts/bootstrap.sh bench  that, plus the benchmark's load generator (bench/run.py)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

profile=${1:-run}
packages=(nginx-light ca-certificates)
if [ "$profile" = test ]; then
  # PostgreSQL: the suite runs on it too. podman/runc/debootstrap: the image test.
  # chromium: the admin's browser test. shellcheck: lint of the shell scripts.
  # procps: the tests find serve's children with ps.
  packages+=(postgresql podman runc debootstrap uidmap shellcheck chromium procps)
  # prometheus: a real Prometheus scrapes the metrics port (tests/test_metrics.py).
  packages+=(prometheus)
elif [ "$profile" = bench ]; then
  # wrk: the load generator; taskset (util-linux) pins it and the server apart.
  packages+=(wrk procps util-linux)
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  packages+=(python3-venv)
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: not root, cannot install ${missing[*]}; serve will run gunicorn without nginx" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
requirements=requirements.txt
if [ "$profile" = test ]; then requirements="requirements-test.txt"; fi
stamp=".venv/.installed-$(sha256sum requirements.txt requirements-test.txt | sha256sum | cut -c1-16)-$profile"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$requirements"
  touch "$stamp"
fi
if [ "$profile" = test ]; then
  # What pip's build isolation fetches to install a source directory with setup.py (script
  # mode), kept beside the venv: the suite runs pip with no index (tests/conftest.py).
  build_wheels=.venv/build-wheels
  build_pins=(setuptools==84.2.1 wheel==0.48.0)
  build_stamp="$build_wheels/.pins-$(echo "${build_pins[*]}" | sha256sum | cut -c1-16)"
  if [ ! -f "$build_stamp" ]; then
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: \
      --dest "$build_wheels" "${build_pins[@]}"
    touch "$build_stamp"
  fi
fi
.venv/bin/python manage.py collectstatic --noinput -v 0
