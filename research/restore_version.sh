#!/usr/bin/env bash
# Put a retired model version back on disk, outside the store, for the studies that start from
# it: runs/history/<name>/<version>/. The store keeps only the served version and the one
# before; CHANGELOG.md names the commit that shipped each earlier one. Every retired version is
# still in the commit below, the last one whose store held all ten.
#   bash research/restore_version.sh 3.3.0
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:?usage: restore_version.sh VERSION}"
commit=7998def
dest="runs/history/agelens-student/${version}"
mkdir -p "$dest"
git archive "$commit" "model_store/agelens-student/${version}" | tar -x -C "$dest" --strip-components=3
ls -l "$dest"
