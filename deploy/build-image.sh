#!/bin/sh
# Builds the gateway image on this host with no network: the wheels come from this checkout's
# virtualenv (its exact versions; llama-cpp-python from pip's cache of the wheel it compiled),
# the base from deploy/build-local-base.sh. Where a registry is reachable, a plain
# `docker build -t callgate .` does the same from python:3.11-slim and PyPI.
#   deploy/build-image.sh [TAG]        (BASE=..., PY=..., PODMAN=... to override)
set -eu
cd "$(dirname "$0")/.."
TAG=${1:-localhost/callgate:local}
BASE=${BASE:-localhost/callgate-base:bookworm}
PY=${PY:-.venv/bin/python}
# crun's cgroup handling and the default ulimits are refused in some VMs; runc with cgroupfs works.
PODMAN=${PODMAN:-podman --runtime=runc --cgroup-manager=cgroupfs}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/containers.conf}
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PY" -m pip freeze --exclude-editable >"$constraints"
"$PY" -m pip wheel -q -c "$constraints" --wheel-dir deploy/wheels ".[llamacpp,vllm]" "setuptools>=69"
rm -f deploy/wheels/callgate-*.whl
$PODMAN build --build-arg BASE="$BASE" --build-arg PIP_NO_INDEX=1 -t "$TAG" .
