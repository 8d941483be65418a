#!/usr/bin/env bash
# Builds the smserve image with podman, with no Docker engine and no registry (as root):
#
#   scripts/build-image.sh [TAG]          build docker/Dockerfile as TAG (default smserve:test)
#   scripts/build-image.sh podman ARGS... run podman on the same store, e.g. `... podman images`
#
# podman keeps its store in $SMSERVE_PODMAN_ROOT (default /var/tmp/smserve-podman), apart from
# anything else on the machine, with a containers.conf that works where root may not raise
# rlimits and cgroups are a v1/v2 hybrid (runc, cgroupfs, explicit ulimits). The base image is
# made once with debootstrap and imported as localhost/debian:bookworm-slim. The wheels in
# requirements.txt are downloaded on the host into $SMSERVE_WHEEL_DIR (default
# /var/tmp/smserve-wheels) and installed in the build from there, with no index: both survive
# between builds, as do podman's layers, so a rebuild after a code change takes seconds.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

root=${SMSERVE_PODMAN_ROOT:-/var/tmp/smserve-podman}
wheels=${SMSERVE_WHEEL_DIR:-/var/tmp/smserve-wheels}
base_image=localhost/debian:bookworm-slim
host_ca=/etc/ssl/certs/ca-certificates.crt

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

mkdir -p "$root"
export CONTAINERS_CONF="$root/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF

pm() { podman --root "$root/storage" --runroot "$root/run" "$@"; }

if [ "${1:-}" = podman ]; then
  shift
  pm "$@"
  exit
fi

tag=${1:-smserve:test}
command -v podman >/dev/null || die "podman not found: apt-get install -y podman runc debootstrap"
[ "$(id -u)" = 0 ] || die "run as root (podman here needs it, and so does debootstrap)"

# One build at a time on this store (two test runs may start together).
exec 9>"$root/lock"
flock 9

debian_uri() {  # debian_uri SUFFIX DEFAULT: apt's own URI for the archive ending in SUFFIX
  local uri
  uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | tr ' ' '\n' | grep -E "/$1/?\$" | head -n 1 || true)
  printf '%s\n' "${uri:-$2}"
}

make_base_image() {
  command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install -y debootstrap"
  local mirror security rootfs
  mirror=$(debian_uri debian http://deb.debian.org/debian)
  security=$(debian_uri debian-security http://deb.debian.org/debian-security)
  rootfs=$(mktemp -d "$root/rootfs.XXXXXX")
  # shellcheck disable=SC2064  # expand now: rootfs is local
  trap "rm -rf '$rootfs'" EXIT
  log "making $base_image with debootstrap from $mirror (about 30 s)"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$root/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $root/debootstrap.log"
  # What Docker's debian:bookworm-slim has too: the security archive; no documentation, manual
  # pages or translations, now or from later installs; no apt caches left in layers.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | pm import - "$base_image" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
}

if ! pm image exists "$base_image"; then
  make_base_image
fi

# The image's python3 is Debian 12's 3.11: download wheels for it, whatever python runs here.
python=${PYTHON:-python3}
[ ! -x .venv/bin/python ] || python=${PYTHON:-.venv/bin/python}
mkdir -p "$wheels"
log "downloading wheels into $wheels"
arch=$(uname -m)
platforms=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch" --platform "manylinux1_$arch")
for glibc in $(seq 5 36); do  # bookworm has glibc 2.36; pip does not infer the older ones
  platforms+=(--platform "manylinux_2_${glibc}_$arch")
done
"$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
  --dest "$wheels" -r requirements.txt \
  || die "pip download failed (network, or a pin with no wheel for CPython 3.11 on Linux)"

build_args=(
  --build-arg "BASE_IMAGE=$base_image"
  --volume "$wheels:/run/wheels:ro"
  --build-arg PIP_FIND_LINKS=/run/wheels
  --build-arg PIP_NO_INDEX=1
)
# pip in the build does not need the index here; the CA bundle is for when it does (a build
# without the wheel dir, behind TLS interception).
if [ -r "$host_ca" ]; then
  build_args+=(--volume "$host_ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi

log "building $tag"
pm build --network=host --isolation=chroot --layers "${build_args[@]}" \
  -t "$tag" -f docker/Dockerfile .
log "built $tag: $(pm image inspect --format '{{.Size}}' "$tag" | numfmt --to=si)B"
