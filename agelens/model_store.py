"""The model store: `<store>/<name>/<version>/` folders, each with a manifest and its files."""

from __future__ import annotations

from pathlib import Path

from agelens.manifest import MANIFEST_FILENAME


class ModelNotFoundError(RuntimeError):
    pass


def _version_key(v: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in v.split("."))


def available_versions(store: Path, name: str) -> list[str]:
    root = store / name
    if not root.is_dir():
        return []
    return sorted((d.name for d in root.iterdir() if (d / MANIFEST_FILENAME).is_file()), key=_version_key)


def resolve_model_dir(store: Path, name: str, version: str) -> Path:
    versions = available_versions(store, name)
    if not versions:
        raise ModelNotFoundError(f"no versions of model {name!r} under {store}")
    if version == "latest":
        version = versions[-1]
    if version not in versions:
        raise ModelNotFoundError(f"model {name!r} has no version {version!r} (have: {', '.join(versions)})")
    return store / name / version
