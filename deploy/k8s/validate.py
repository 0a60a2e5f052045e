"""Render the kustomize base and every overlay, then validate each object offline against the
Kubernetes JSON schemas bundled in `kubernetes-validate` (strict: an unknown field is an error).

    python deploy/k8s/validate.py            # CI runs it (.ci/run); exit status 1 on any error

No cluster is involved: this proves the manifests are well-formed for the API version, not that
they were deployed. Custom resources (the Prometheus Operator's PodMonitor) have no bundled
schema; they are checked for their apiVersion, kind and name only, and reported as such.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

K8S = Path(__file__).resolve().parent
# The oldest Kubernetes release still supported upstream when this was written; the manifests use
# nothing newer (autoscaling/v2, policy/v1).
KUBERNETES_VERSION = "1.31.0"
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def render(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` (kustomize built into kubectl) of one folder, as objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not on PATH: it renders the kustomizations (kubectl kustomize)")
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate(docs: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Errors, as 'Kind/name: message'; empty when every object is valid."""
    errors = []
    for d in docs:
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if (d.get("apiVersion"), d.get("kind")) in CUSTOM_KINDS:
            if not d.get("metadata", {}).get("name") or not d.get("spec"):
                errors.append(f"{name}: a custom resource needs metadata.name and spec")
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: no schema for it in Kubernetes {version} ({exc})")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = ap.parse_args()
    failed = False
    for folder in kustomizations():
        docs = render(folder)
        errors = validate(docs, args.kubernetes_version)
        kinds = ", ".join(sorted({d["kind"] for d in docs}))
        status = "FAILED" if errors else "ok"
        where, version = folder.relative_to(K8S), args.kubernetes_version
        print(f"{where}: {len(docs)} objects ({kinds}) against Kubernetes {version}: {status}")
        for e in errors:
            print(f"  {e}")
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
