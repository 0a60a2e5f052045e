#!/usr/bin/env bash
# Put a retired model version back on disk, outside the store, for the studies that start from
# it: runs/history/<name>/<version>/. The store keeps only the served version and the one
# before (and the warm start of the current recipe); every retired version is read from the last
# commit whose store held it.
#   bash research/restore_version.sh 3.3.0
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:?usage: restore_version.sh VERSION}"
path="model_store/agelens-student/${version}"
last=$(git rev-list -1 HEAD -- "$path")
if [ -z "$last" ]; then
    echo "no version ${version} in git history" >&2
    exit 1
fi
# The last commit that touched the folder removed it, unless the version is still in the store.
if git cat-file -e "${last}:${path}/manifest.json" 2>/dev/null; then commit=$last; else commit="${last}^"; fi
dest="runs/history/agelens-student/${version}"
mkdir -p "$dest"
git archive "$commit" "$path" | tar -x -C "$dest" --strip-components=3
ls -l "$dest"
