#!/usr/bin/env bash
# A stand-in for the jobs and chatbot images' base, made locally so that `make images-local` pulls nothing:
#   bash images/local-base.sh            (podman; needs root, debootstrap and a Debian mirror)
# Debian bookworm (minbase) with Debian's Python 3.11, python-is-python3 and python3-venv, tagged as the name the
# Dockerfiles' FROM gives. It is for test builds only: a real build (`make images`) uses the real base. The host's
# CA bundle goes in, and PIP_CERT names it, so that pip in the build trusts what the host trusts (a proxy's CA).
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${CONTAINER_ENGINE:-podman}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# the one base both Dockerfiles name (a test checks they agree)
BASE=$(awk '$1 == "FROM" && $2 ~ /^python:/ {print $2; exit}' images/jobs/Dockerfile)
REF="docker.io/library/$BASE"
if "$ENGINE" image exists "$REF" 2>/dev/null && [ -z "${REBUILD:-}" ]; then
  echo "local-base: $REF is there (REBUILD=1 makes it again)"
  exit 0
fi
ROOTFS=$(mktemp -d "${TMPDIR:-/tmp}/loganalyzer-base.XXXXXX")
trap 'rm -rf "$ROOTFS"' EXIT
echo "local-base: debootstrap bookworm into $ROOTFS (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR" > "$ROOTFS.log" 2>&1 || { tail -20 "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/*
cp "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
tar -C "$ROOTFS" -c . | "$ENGINE" import --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
  --change 'CMD ["python"]' - "$REF" > /dev/null
echo "local-base: $REF ($("$ENGINE" image inspect --format '{{.Size}}' "$REF" | awk '{printf "%.0f MB", $1/1e6}'))"
