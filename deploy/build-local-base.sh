#!/bin/sh
# Makes a Debian 12 base image (Python 3.11) locally, for hosts that reach a Debian package mirror
# but no image registry; build the gateway on it with
#   podman build --build-arg BASE=localhost/callgate-base:bookworm -t callgate .
# Users with a registry keep the Dockerfile's default base (python:3.11-slim). Needs root,
# debootstrap and podman (docker import works the same).
set -eu
TAG=${1:-localhost/callgate-base:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ENGINE=${ENGINE:-podman}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# python3-venv: the Dockerfile installs into a venv (Debian's own Python refuses system-wide pip).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
    bookworm "$root" "$MIRROR"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar --numeric-owner -C "$root" -c . | "$ENGINE" import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$TAG"
