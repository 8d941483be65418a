#!/usr/bin/env bash
# Builds the smserve image and pushes it to Amazon ECR, ready for SageMaker.
#
#   docker/docker_to_ecr.sh [options] [NAME]        NAME: the ECR repository (default smserve)
#
#   --tag TAG          image tag (default latest)
#   --platform P       target platform (default linux/amd64, what SageMaker's ml.* instances
#                      run; linux/arm64 for Graviton instances such as ml.c7g)
#   --region R         AWS region (default: `aws configure get region`, else $AWS_REGION)
#   --build-arg K=V    passed to docker build (repeatable), e.g. PIP_INDEX_URL=...
#   --dry-run          print every command instead of running it; the read-only look-ups
#                      (region, account, whether the repository exists) still run
#
# Reads the account from `aws sts get-caller-identity`, creates the repository when it is
# missing, logs docker in with `aws ecr get-login-password`, tags
# ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME:TAG and pushes it. The image URI is printed on
# stdout as the last line.
set -euo pipefail

usage() { sed -n '2,17s/^# \{0,1\}//p' "$0"; }
log() { printf 'docker_to_ecr: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

repo_root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
name=smserve
tag=latest
platform=linux/amd64
region=""
dry_run=0
build_args=()

while [ $# -gt 0 ]; do
  case $1 in
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; tag=$2; shift 2 ;;
    --platform) [ $# -ge 2 ] || die "--platform needs a value"; platform=$2; shift 2 ;;
    --region) [ $# -ge 2 ] || die "--region needs a value"; region=$2; shift 2 ;;
    --build-arg) [ $# -ge 2 ] || die "--build-arg needs K=V"; build_args+=(--build-arg "$2"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option: $1" ;;
    *) name=$1; shift ;;
  esac
done
[[ $name =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] \
  || die "'$name' is not a valid ECR repository name (lower case, digits, . _ - /)"

# Under --dry-run every command is printed on stdout (fd 3, even from inside $(...)).
exec 3>&1
show() { printf '+' >&3; printf ' %q' "$@" >&3; printf '\n' >&3; }
# Mutating commands go through run: printed under --dry-run, executed otherwise.
run() {
  if [ "$dry_run" = 1 ]; then show "$@"; else "$@"; fi
}
# Read-only look-ups run in both modes (later commands need their answers).
look_up() {
  [ "$dry_run" = 0 ] || show "$@"
  "$@"
}

command -v aws >/dev/null \
  || die "the AWS CLI (aws) is not on PATH: install it (https://aws.amazon.com/cli/) and run 'aws configure'"
command -v docker >/dev/null \
  || die "docker is not on PATH: install Docker (or alias docker=podman) to build and push the image"
if [ "$dry_run" = 0 ]; then
  docker info >/dev/null 2>&1 \
    || die "docker cannot reach its daemon: start Docker, or check that you may use it ('docker info' failed)"
fi

if [ -z "$region" ]; then
  region=$(look_up aws configure get region || true)
  region=${region:-${AWS_REGION:-${AWS_DEFAULT_REGION:-}}}
fi
[ -n "$region" ] || die "no AWS region: run 'aws configure set region REGION' or pass --region"

account=$(look_up aws sts get-caller-identity --query Account --output text) \
  || die "AWS credentials are not configured or have expired ('aws sts get-caller-identity' failed): run 'aws configure' or 'aws sso login'"
[[ $account =~ ^[0-9]{12}$ ]] || die "unexpected account id from aws sts get-caller-identity: '$account'"

domain=amazonaws.com
[[ $region != cn-* ]] || domain=amazonaws.com.cn
registry="$account.dkr.ecr.$region.$domain"
image="$registry/$name:$tag"

log "building $name:$tag for $platform"
run docker build --platform "$platform" "${build_args[@]}" \
  -f "$repo_root/docker/Dockerfile" -t "$name:$tag" "$repo_root"

if ! look_up aws ecr describe-repositories --region "$region" --repository-names "$name" >/dev/null 2>&1; then
  log "creating ECR repository $name in $region"
  run aws ecr create-repository --region "$region" --repository-name "$name" \
    --image-scanning-configuration scanOnPush=true >/dev/null
fi

log "logging docker in to $registry"
if [ "$dry_run" = 1 ]; then
  printf '+ aws ecr get-login-password --region %q | docker login --username AWS --password-stdin %q\n' \
    "$region" "$registry" >&3
else
  aws ecr get-login-password --region "$region" \
    | docker login --username AWS --password-stdin "$registry" >/dev/null \
    || die "docker login to $registry failed"
fi

log "pushing $image"
run docker tag "$name:$tag" "$image"
run docker push "$image"
printf '%s\n' "$image"
