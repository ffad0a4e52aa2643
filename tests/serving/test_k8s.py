"""The KubeRay manifests in k8s/: valid against KubeRay's CRDs (../shared/k8s-crds, strict: a field Kubernetes
would silently prune — e.g. a misspelled ``authOptions`` — is an error), and their security settings: Ray token
auth on every cluster, reindex jobs never sharing the serving cluster's trust, NetworkPolicies that keep Ray's
ports between the pods of one deployment and the dashboard to the operator, the API behind keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CRDS = ROOT.parent / "shared" / "k8s-crds"
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayCluster": "ray.io_rayclusters.yaml"}
RAY_PORTS = {6379, 8265, 10001, 52365}
OPERATOR_ONLY = {8265, 52365}


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(name) if d["kind"] == kind]
    return doc


def _strict(schema: Any) -> Any:
    """The CRD schema with ``additionalProperties: false`` wherever properties are listed (pruning → error)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _validator(kind: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (only present on the project's machines)")
    crd = yaml.safe_load(path.read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(_strict(schema))


def _cluster(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterConfig"] if doc["kind"] == "RayService" else doc["spec"]["rayClusterSpec"]


def _templates(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster.get("workerGroupSpecs", []))]


@pytest.mark.parametrize(("name", "kind"), [("rayservice.yaml", "RayService"), ("rayjob-reindex.yaml", "RayJob")])
def test_manifests_match_the_kuberay_crds(name: str, kind: str) -> None:
    doc = _one(name, kind)
    errors = sorted(_validator(kind).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:5]]
    broken = yaml.safe_load(yaml.safe_dump(doc))
    _cluster(broken)["authOption"] = {"mode": "token"}  # a typo Kubernetes would prune silently
    assert list(_validator(kind).iter_errors(broken))


def test_every_ray_cluster_has_its_own_token() -> None:
    service, job = _one("rayservice.yaml", "RayService"), _one("rayjob-reindex.yaml", "RayJob")
    secrets = []
    for doc in (service, job):
        auth = _cluster(doc).get("authOptions") or {}
        assert auth.get("mode") == "token", doc["kind"]
        secrets.append(auth.get("secretName"))
        for template in _templates(_cluster(doc)):
            for container in template["spec"]["containers"]:
                env = {e["name"]: e for e in container.get("env", [])}
                assert env.get("RAY_AUTH_MODE", {}).get("value", "token") == "token"
                assert "value" not in env.get("RAY_AUTH_TOKEN", {}), "a token in the manifest"
    # no secretName: KubeRay generates one per cluster; a named one must differ between serving and reindex
    assert secrets[0] is None or secrets[0] != secrets[1]


def test_reindex_jobs_share_no_serving_credentials() -> None:
    service, job = _one("rayservice.yaml", "RayService"), _one("rayjob-reindex.yaml", "RayJob")
    assert job["spec"].get("submissionMode") == "HTTPMode"  # the operator submits: no submitter pod needs 8265

    def secret_names(doc: dict[str, Any]) -> set[str]:
        names = set()
        for template in _templates(_cluster(doc)):
            names |= {v["secret"]["secretName"] for v in template["spec"].get("volumes", []) if "secret" in v}
            for container in template["spec"]["containers"]:
                names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                          if "secretKeyRef" in e.get("valueFrom", {})}
        return names

    assert not secret_names(service) & secret_names(job)
    labels = {t["metadata"]["labels"]["app.kubernetes.io/component"] for t in _templates(_cluster(service))}
    assert labels == {"serving"}
    assert {t["metadata"]["labels"]["app.kubernetes.io/component"] for t in _templates(_cluster(job))} == {"reindex"}


def _rules(policy: dict[str, Any]) -> list[tuple[list[dict[str, Any]], set[int] | None]]:
    return [(rule.get("from", []), {p["port"] for p in rule["ports"]} if "ports" in rule else None)
            for rule in policy["spec"].get("ingress", [])]


@pytest.mark.parametrize("component", ["serving", "reindex"])
def test_network_policy_keeps_ray_ports_inside_and_the_dashboard_to_the_operator(component: str) -> None:
    policies = [d for d in _docs("networkpolicy.yaml") if d["kind"] == "NetworkPolicy"]
    (policy,) = [p for p in policies
                 if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == component]
    own = policy["spec"]["podSelector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for peers, ports in _rules(policy):
        assert peers, "a rule without 'from' admits every source"
        for peer in peers:
            pods = peer.get("podSelector")
            namespaces = peer.get("namespaceSelector")
            assert "ipBlock" not in peer
            if ports is None or ports & RAY_PORTS:  # Ray's ports: the same deployment's pods, or the operator
                if namespaces is None:
                    assert pods is not None and pods.get("matchLabels") == own, (component, peer)
                else:
                    assert ports is not None and ports <= OPERATOR_ONLY, (component, peer)
                    assert namespaces.get("matchLabels") and pods and pods.get("matchLabels"), (component, peer)
            elif ports == {8080}:  # Ray's metrics port: Prometheus in the monitoring namespace only
                assert component == "serving" and namespaces == {
                    "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}, (component, peer)
            else:
                assert ports == {8000} and component == "serving", (component, ports)


def test_serving_config_requires_keys_and_keeps_admin_off() -> None:
    from retrec.serving.config import ServingConfig

    service = _one("rayservice.yaml", "RayService")
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    cfg = ServingConfig.model_validate(args)
    assert cfg.auth.mode == "keys" and cfg.auth.api_keys_file and not cfg.admin.enabled
