"""Shared helpers for the deployment tests: manifests, a JSON-patch applier, the real CLI."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "exporters" / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
FIXTURES = REPO / "tests" / "fixtures" / "deploy"


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def base_objects() -> dict[str, dict[str, Any]]:
    """kind -> object for every manifest listed in base/kustomization.yaml."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    out: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in load_docs(K8S / "base" / name):
            assert doc["kind"] not in out, f"two {doc['kind']} objects"
            out[doc["kind"]] = doc
    return out


def container(daemonset: dict[str, Any]) -> dict[str, Any]:
    containers = daemonset["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add/replace/remove/test, as kustomize applies a JSON6902 patch file."""
    out = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        target: Any = out
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        kind = op["op"]
        if isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if kind == "add":
                target.insert(index, op["value"])
            elif kind == "replace":
                target[index] = op["value"]
            elif kind == "remove":
                del target[index]
            elif kind == "test":
                assert target[index] == op["value"], op
            else:
                raise ValueError(f"unsupported op {kind}")
            continue
        if kind in ("replace", "remove", "test") and last not in target:
            raise KeyError(f"{op['path']}: nothing to {kind}")
        if kind in ("add", "replace"):
            target[last] = op["value"]
        elif kind == "remove":
            del target[last]
        elif kind == "test":
            assert target[last] == op["value"], op
        else:
            raise ValueError(f"unsupported op {kind}")
    return out


def parse_with_real_cli(args: list[str]) -> dict[str, Any]:
    """The parameters `fmdiag exporter` gets from ``args``; click raises on an unknown flag."""
    from fmdiag.exporters.cli import exporter

    ctx = exporter.make_context("exporter", list(args))
    return dict(ctx.params)
