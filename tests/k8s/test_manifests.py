"""k8s/ as files and as Kustomize builds: every RayService, RayJob and RayCluster (each file's and each overlay's
output) valid against KubeRay's CRDs (../shared/k8s-crds, strict: a field Kubernetes would silently prune — e.g.
a misspelled ``authOptions`` — is an error); the overlays render (here, and like ``kubectl kustomize`` where
kubectl is installed); no manifest is left out of a kustomization."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import (
    K8S,
    KUSTOMIZATION,
    crd_errors,
    groups,
    is_object,
    json_patch,
    kustomize,
    kustomize_dirs,
    ray_documents,
    rel,
    validator,
    yaml_docs,
    yaml_files,
)

RAY_DOCS = ray_documents()


def test_the_manifests_hold_a_service_and_the_jobs() -> None:
    names = {(d["kind"], d["metadata"]["name"]) for _, d in RAY_DOCS}
    assert names == {("RayService", "retrec"), ("RayJob", "retrec-reindex-bm25"), ("RayJob", "retrec-reindex-dense"),
                     ("RayJob", "retrec-train-dense"), ("RayJob", "retrec-train-bert4rec"),
                     ("RayJob", "retrec-train-online")}
    where = {w.split(":")[0] for w, _ in RAY_DOCS}
    assert {"overlays/cpu/ (kustomize)", "overlays/gpu/ (kustomize)", "overlays/gpu/jobs/ (kustomize)"} <= where


@pytest.mark.parametrize(("where", "doc"), RAY_DOCS, ids=[w for w, _ in RAY_DOCS])
def test_every_ray_document_matches_the_kuberay_crds(where: str, doc: dict[str, Any]) -> None:
    errors = crd_errors(doc)
    assert not errors, errors[:5]


@pytest.mark.parametrize("where", ["base/rayservice.yaml:RayService/retrec",
                                   "jobs/rayjob-reindex-dense.yaml:RayJob/retrec-reindex-dense"])
def test_the_cluster_specs_are_valid_ray_clusters(where: str) -> None:
    doc = dict(RAY_DOCS)[where]
    spec = doc["spec"]["rayClusterConfig" if doc["kind"] == "RayService" else "rayClusterSpec"]
    raycluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "check"}, "spec": spec}
    assert not crd_errors(raycluster)


@pytest.mark.parametrize("kind", ["RayService", "RayJob", "RayCluster"])
def test_a_misspelled_field_fails_the_crd_check(kind: str) -> None:
    source = next(d for _, d in RAY_DOCS if d["kind"] == ("RayService" if kind == "RayCluster" else kind))
    doc = yaml.safe_load(yaml.safe_dump(source))
    if kind == "RayCluster":
        doc = {"apiVersion": "ray.io/v1", "kind": kind, "metadata": {"name": "x"},
               "spec": doc["spec"]["rayClusterConfig"]}
    spec = doc["spec"].get("rayClusterConfig") or doc["spec"].get("rayClusterSpec") or doc["spec"]
    spec["authOption"] = {"mode": "token"}  # a typo Kubernetes would prune silently
    assert list(validator(kind).iter_errors(doc))
    del spec["authOption"]
    next(iter(groups(spec).values()))["template"]["spec"]["containers"][0]["resource"] = {}  # pod typo
    assert list(validator(kind).iter_errors(doc))


def _patch_files() -> set[str]:
    found = set()
    for folder in kustomize_dirs():
        spec = yaml.safe_load((folder / KUSTOMIZATION).read_text())
        found |= {rel((folder / p["path"]).resolve()) for p in spec.get("patches", []) if "path" in p}
    return found


def test_every_manifest_is_deployed_by_a_kustomization() -> None:
    """Each YAML file is a kustomization, a patch one names, or a resource some overlay renders (the PodMonitor
    aside: it needs the Prometheus Operator); overlays reach every base and job."""
    patches = _patch_files()
    rendered = {(d["kind"], d["metadata"]["name"]) for f in kustomize_dirs() if "overlays" in rel(f)
                for d in kustomize(f)}
    for path in yaml_files():
        if path.name == KUSTOMIZATION or rel(path) in patches or rel(path) == "podmonitor.yaml":
            continue
        docs = yaml_docs(path)
        assert docs and all(is_object(d) for d in docs), rel(path)
        for doc in docs:
            assert (doc["kind"], doc["metadata"]["name"]) in rendered, (rel(path), doc["kind"])
    for patch in patches:
        assert isinstance(yaml.safe_load((K8S / patch).read_text()), list), f"{patch}: not a JSON6902 patch"


def test_json_patch_refuses_missing_targets() -> None:
    doc = {"spec": {"groups": [{"name": "a"}]}}
    assert json_patch(doc, [{"op": "add", "path": "/spec/groups/-", "value": {"name": "b"}},
                            {"op": "replace", "path": "/spec/groups/0/name", "value": "c"}]) == \
        {"spec": {"groups": [{"name": "c"}, {"name": "b"}]}}
    for op in ({"op": "replace", "path": "/spec/group/0", "value": 1}, {"op": "remove", "path": "/spec/groups/1"},
               {"op": "add", "path": "/spec/missing/x", "value": 1}, {"op": "replace", "path": "/spec/x", "value": 1}):
        with pytest.raises(ValueError):
            json_patch(doc, [op])


@pytest.mark.parametrize("folder", [rel(f) for f in kustomize_dirs()])
def test_overlays_render_as_kubectl_kustomize_does(folder: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the overlays are checked by the renderer in tests/k8s/manifests.py only")
    out = subprocess.run([kubectl, "kustomize", str(K8S / folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d]

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(theirs, key=key) == sorted(kustomize(K8S / folder), key=key)
