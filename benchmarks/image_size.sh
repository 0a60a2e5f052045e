#!/usr/bin/env bash
# Size of the service image, of its base, and of the layers we add; with the venv's biggest parts.
#   bash benchmarks/image_size.sh > benchmarks/results/image_size.txt   (after `docker compose build`)
set -euo pipefail
IMAGE="${1:-agelens:latest}"
BASE="${BASE_IMAGE:-python:3.11-slim}"
mb() { docker image inspect "$1" --format '{{.Size}}' | awk '{printf "%.0f", $1/1000000}'; }
echo "image $IMAGE: $(mb "$IMAGE") MB (docker's MB = 10^6 bytes)"
echo "base  $BASE: $(mb "$BASE") MB"
echo "added by our layers: $(( $(mb "$IMAGE") - $(mb "$BASE") )) MB"
echo
echo "layers (newest first):"
docker history "$IMAGE" --format '{{.Size}}\t{{.CreatedBy}}' | cut -c1-110 | grep -v '^0B'
echo
echo "largest packages in /opt/venv (MiB):"
docker run --rm --entrypoint sh "$IMAGE" -c \
  'du -sm /opt/venv; cd /opt/venv/lib/python3*/site-packages && du -sm * | sort -rn | head -12'
