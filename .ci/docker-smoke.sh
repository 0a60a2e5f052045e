#!/usr/bin/env bash
# Build the service image and run it with docker compose, for real: hadolint, compose config,
# compose up --wait (healthcheck on /ready), a POST /estimate with a face photo from outside the
# container, then down. Uses ../shared/tools/docker-offline.sh where no registry is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
# Always evaluated when present: it is idempotent (reuses a running engine and an existing
# stand-in image) and it is what sets BASE_IMAGE to the local stand-in.
if [ -f ../shared/tools/docker-offline.sh ]; then
  eval "$(bash ../shared/tools/docker-offline.sh)"
fi
export BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
export AGELENS_PORT="${AGELENS_PORT:-18000}"
hadolint Dockerfile
docker compose config -q
trap 'docker compose logs --tail 50 || true; docker compose down -v || true' EXIT
docker compose up --build --wait --wait-timeout 180
face=$(ls ../shared/datasets/utkface/35_0_0_*.jpg 2>/dev/null | head -n 1 || true)
if [ -z "$face" ]; then
  face=$(mktemp --suffix=.png)
  .venv/bin/python -c "from PIL import Image; Image.new('RGB', (64, 64), (128, 128, 128)).save('$face')"
fi
body=$(curl -sS --fail-with-body -F "image=@${face}" "http://127.0.0.1:${AGELENS_PORT}/estimate?distribution=false")
echo "$body"
.venv/bin/python - "$body" "$face" <<'PY'
import json, sys
body = json.loads(sys.argv[1])
assert body["model"]["name"] == "agelens-student", body
if "utkface" in sys.argv[2]:
    assert len(body["faces"]) == 1 and 10 < body["faces"][0]["age"] < 70, body
print("docker smoke: OK", body["model"], [round(f["age"], 1) for f in body["faces"]])
PY
# The API docs work offline: their page names only this server's assets, and each is served.
docs=$(curl -sS --fail-with-body "http://127.0.0.1:${AGELENS_PORT}/docs")
if grep -Eq 'https?://' <<<"$docs"; then echo "docs page names an outside host"; exit 1; fi
for asset in swagger-ui-bundle.js swagger-ui.css redoc.standalone.js; do
  curl -sS --fail -o /dev/null "http://127.0.0.1:${AGELENS_PORT}/docs-assets/${asset}"
done
echo "docker smoke: /docs and its assets served from the image"
docker image ls agelens:latest --format 'image size: {{.Size}}'
