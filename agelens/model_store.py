"""The model store: `<store>/<name>/<version>/` folders, each with a manifest and its files."""

from __future__ import annotations

from pathlib import Path

from agelens.manifest import MANIFEST_FILENAME


class ModelNotFoundError(RuntimeError):
    pass


def _parts(s: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in s.split("."))


def _version_key(v: str) -> tuple[object, ...]:
    """Semantic-version order: 4.0.0-rc.1 sorts before 4.0.0 and after 3.5.0."""
    release, _, pre = v.partition("-")
    return (_parts(release), 0 if pre else 1, _parts(pre) if pre else ())


def is_prerelease(version: str) -> bool:
    """A version with a pre-release suffix (4.0.0-rc.1): served only when named, never as latest."""
    return "-" in version


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
        releases = [v for v in versions if not is_prerelease(v)]
        if not releases:
            raise ModelNotFoundError(
                f"model {name!r} has only pre-release versions ({', '.join(versions)}): name one"
            )
        version = releases[-1]
    if version not in versions:
        raise ModelNotFoundError(f"model {name!r} has no version {version!r} (have: {', '.join(versions)})")
    return store / name / version
