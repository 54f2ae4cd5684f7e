#!/usr/bin/env bash
# Makes the base image deploy/Dockerfile names, debian:bookworm-slim, from
# Debian's packages with debootstrap, for machines that reach Debian's
# package mirror but no container registry (CI here). Where Docker Hub is
# reachable, `docker pull debian:bookworm-slim` does the same job.
#
#   deploy/docker/debian-base.sh            make it unless it is there
#   deploy/docker/debian-base.sh --force    make it again
#
# MIRROR=http://deb.debian.org/debian picks the mirror; TAG the name.
# Needs root (or sudo), debootstrap (installed when missing) and Docker.
set -euo pipefail

TAG=${TAG:-debian:bookworm-slim}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm

if [ "${1:-}" != --force ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG is there"
    exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
if ! command -v debootstrap >/dev/null; then
    $sudo apt-get update -qq && $sudo apt-get install -y -qq debootstrap
fi

root=$(mktemp -d)
trap '$sudo rm -rf "$root"' EXIT
# minbase: dpkg, apt and the essential packages, as the slim image has;
# ca-certificates so HTTPS clients (object stores) trust the public CAs.
$sudo debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root/rootfs" "$MIRROR" >"$root/debootstrap.log" 2>&1 \
    || { tail -20 "$root/debootstrap.log" >&2; exit 1; }
# What the slim image leaves out: package lists, caches, docs.
$sudo rm -rf "$root"/rootfs/var/lib/apt/lists/* "$root"/rootfs/var/cache/apt/*.bin \
    "$root"/rootfs/usr/share/doc/* "$root"/rootfs/usr/share/man/* "$root"/rootfs/usr/share/locale/*
echo "deb $MIRROR $SUITE main" | $sudo tee "$root/rootfs/etc/apt/sources.list" >/dev/null
$sudo tar -C "$root/rootfs" -c . | docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$TAG" >/dev/null
echo "made $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
