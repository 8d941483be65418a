#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback, for the test suite.
#   scripts/postgres.sh start [DIR] [PORT]   initdb (first time) + start; prints DATABASE_URL
#   scripts/postgres.sh stop  [DIR]          stop it (the data stays until DIR is removed)
#   scripts/postgres.sh url   [DIR] [PORT]   print DATABASE_URL only
# DIR defaults to var/postgres in the checkout. PORT defaults to SMSERVE_PG_PORT, else the
# first port from 25432 up that nothing listens on: below the kernel's ephemeral range
# (32768+), where any loopback client's own end can hold a port for a moment, and clear of
# another cluster on this (possibly shared) machine. The cluster listens on 127.0.0.1 only,
# with its unix socket inside its own directory. As root, the server runs as the `postgres`
# user (PostgreSQL refuses to run as root); when that user cannot reach DIR (a checkout
# under a private directory, such as root's home), the cluster lives in a directory of its
# own under /var/tmp, owned by postgres, that DIR/cluster-dir names, and `stop` removes it.
set -euo pipefail

cmd=${1:-start}
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
dir=${2:-${SMSERVE_PG_DIR:-$root/var/postgres}}
port=${3:-${SMSERVE_PG_PORT:-}}
db=smserve
user=smserve
password=smserve

bindir=${PG_BINDIR:-}
if [ -z "$bindir" ]; then
  for candidate in /usr/lib/postgresql/*/bin; do
    [ -x "$candidate/initdb" ] && bindir=$candidate
  done
fi
[ -n "$bindir" ] || { echo "postgres.sh: no PostgreSQL server found (apt-get install postgresql)" >&2; exit 1; }

as_owner() {  # run a PostgreSQL binary as the cluster's owner
  if [ "$(id -u)" = 0 ]; then
    # From /: the caller's directory may be one postgres cannot enter.
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

url() { echo "postgres://$user:$password@127.0.0.1:$port/$db"; }

locate() {  # where the cluster is: DIR itself, or the directory DIR/cluster-dir names
  pointer="$dir/cluster-dir"
  cluster=$dir
  [ ! -f "$pointer" ] || cluster=$(cat "$pointer")
}
locate

running_port() {  # the port of the cluster running in DIR, if one is
  [ -f "$cluster/data/postmaster.pid" ] && sed -n 4p "$cluster/data/postmaster.pid"
}

place_cluster() {  # as root: a cluster directory the postgres user owns and can reach
  [ "$(id -u)" = 0 ] || return 0
  if [ "$cluster" = "$dir" ]; then
    chown postgres: "$dir"
    if runuser -u postgres -- test -w "$dir/."; then
      return 0
    fi
    # A parent directory is private: the cluster goes where postgres can reach it.
    cluster=$(mktemp -d /var/tmp/smserve-postgres.XXXXXX)
    printf '%s\n' "$cluster" >"$pointer"
  fi
  chown postgres: "$cluster"
  runuser -u postgres -- test -w "$cluster/." || {
    echo "postgres.sh: the postgres user cannot write to $cluster" >&2
    exit 1
  }
}

choose_port() {
  [ -z "$port" ] || return 0
  port=$(running_port || true)
  [ -z "$port" ] || return 0
  port=25432
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
}

case "$cmd" in
  start)
    choose_port
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    locate
    [ -d "$cluster" ] || { rm -f "$pointer"; cluster=$dir; }
    place_cluster
    if [ ! -f "$cluster/data/PG_VERSION" ]; then
      pwfile=$(mktemp)
      echo "$password" >"$pwfile"
      [ "$(id -u)" = 0 ] && chown postgres: "$pwfile"
      as_owner "$bindir/initdb" -D "$cluster/data" -U postgres --auth=trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 >"$cluster/initdb.log" 2>&1 \
        || { cat "$cluster/initdb.log" >&2; rm -f "$pwfile"; exit 1; }
      rm -f "$pwfile"
      fresh=1
    fi
    if ! as_owner "$bindir/pg_ctl" -D "$cluster/data" status >/dev/null 2>&1; then
      # fsync off: a test cluster trades durability for speed.
      as_owner "$bindir/pg_ctl" -D "$cluster/data" -l "$cluster/server.log" -w -t 30 start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k '$cluster' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        >/dev/null || { tail -20 "$cluster/server.log" >&2; exit 1; }
    fi
    if [ "${fresh:-0}" = 1 ]; then
      as_owner "$bindir/psql" -h "$cluster" -p "$port" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE $user LOGIN CREATEDB PASSWORD '$password'" \
        -c "CREATE DATABASE $db OWNER $user" >/dev/null
    fi
    url
    ;;
  stop)
    if [ -f "$cluster/data/PG_VERSION" ]; then
      as_owner "$bindir/pg_ctl" -D "$cluster/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    if [ "$cluster" != "$dir" ]; then
      rm -rf "$cluster" "$pointer"
    fi
    ;;
  url)
    choose_port
    url
    ;;
  *)
    echo "usage: $0 start|stop|url [DIR] [PORT]" >&2
    exit 2
    ;;
esac
