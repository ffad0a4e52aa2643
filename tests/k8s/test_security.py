"""Trust in k8s/, for every variant: Ray token auth on every cluster, reindex and training jobs never sharing the
serving cluster's trust (own token, no serving secrets, submitted by the operator), NetworkPolicies that keep Ray's
ports between the pods of one kind of deployment and the dashboard to the operator, volumes mounted as narrowly as
the work allows."""

from __future__ import annotations

from typing import Any

import pytest

from tests.k8s.manifests import K8S, cluster, kustomize, ray_documents, templates, yaml_docs

RAY_PORTS = {6379, 8265, 10001, 52365}
OPERATOR_ONLY = {8265, 52365}
COMPONENT = "app.kubernetes.io/component"
RAY_DOCS = ray_documents()
JOBS = [(w, d) for w, d in RAY_DOCS if d["kind"] == "RayJob"]
SERVICE = next(d for w, d in RAY_DOCS if w.startswith("base/rayservice.yaml"))


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for t in templates(cluster(doc)) for c in t["spec"]["containers"]]


@pytest.mark.parametrize(("where", "doc"), RAY_DOCS, ids=[w for w, _ in RAY_DOCS])
def test_every_ray_cluster_has_its_own_token(where: str, doc: dict[str, Any]) -> None:
    auth = cluster(doc).get("authOptions") or {}
    assert auth.get("mode") == "token"
    # no secretName: KubeRay generates one per cluster; a named one must differ from the serving cluster's
    assert auth.get("secretName") is None or doc is SERVICE or \
        auth["secretName"] != (cluster(SERVICE).get("authOptions") or {}).get("secretName")
    for container in _containers(doc):
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value", "token") == "token"
        assert "value" not in env.get("RAY_AUTH_TOKEN", {}), "a token in the manifest"


def _secret_names(doc: dict[str, Any]) -> set[str]:
    names = set()
    for template in templates(cluster(doc)):
        for volume in template["spec"].get("volumes", []):
            names |= {volume["secret"]["secretName"]} if "secret" in volume else set()
            names |= {s["secret"]["name"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s}
        for container in template["spec"]["containers"]:
            names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                      if "secretKeyRef" in e.get("valueFrom", {})}
            names |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
    return names


@pytest.mark.parametrize(("where", "job"), JOBS, ids=[w for w, _ in JOBS])
def test_jobs_share_no_serving_credentials(where: str, job: dict[str, Any]) -> None:
    assert job["spec"].get("submissionMode") == "HTTPMode"  # the operator submits: no submitter pod needs 8265
    assert "submitterPodTemplate" not in job["spec"]
    assert not _secret_names(job), "reindex and training jobs need no secret"
    assert not _secret_names(job) & _secret_names(SERVICE)
    component = job["metadata"]["labels"][COMPONENT]
    assert component == ("training" if job["metadata"]["name"].startswith("retrec-train-") else "reindex")
    assert {t["metadata"]["labels"][COMPONENT] for t in templates(cluster(job))} == {component}


@pytest.mark.parametrize("folder", ["base", "overlays/cpu", "overlays/gpu", "overlays/sharded"])
def test_serving_pods_are_labelled_serving_and_mount_models_read_only(folder: str) -> None:
    (service,) = [d for d in kustomize(K8S / folder) if d["kind"] == "RayService"]
    assert {t["metadata"]["labels"][COMPONENT] for t in templates(cluster(service))} == {"serving"}
    for container in _containers(service):
        assert all(m.get("readOnly") for m in container.get("volumeMounts", [])), container["name"]


def test_jobs_mount_data_read_only_and_the_volumes_exist() -> None:
    claims = {d["metadata"]["name"]: d for d in yaml_docs(K8S / "base" / "pvc.yaml")}
    assert set(claims) == {"retrec-models", "retrec-data"}
    assert all("ReadWriteMany" in c["spec"]["accessModes"] for c in claims.values())  # many pods, many nodes
    for _, doc in RAY_DOCS:
        for template in templates(cluster(doc)):
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
            used = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
            assert used <= set(claims)
            for container in template["spec"]["containers"]:
                for mount in container.get("volumeMounts", []):
                    claim = volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName")
                    if claim == "retrec-data":
                        assert mount.get("readOnly") and mount["mountPath"] == "/data"
                    elif claim == "retrec-models":
                        assert mount["mountPath"] == "/models"


def _rules(policy: dict[str, Any]) -> list[tuple[list[dict[str, Any]], set[int] | None]]:
    return [(rule.get("from", []), {p["port"] for p in rule["ports"]} if "ports" in rule else None)
            for rule in policy["spec"].get("ingress", [])]


def _policies() -> list[dict[str, Any]]:
    return [d for d in yaml_docs(K8S / "base" / "networkpolicy.yaml") if d["kind"] == "NetworkPolicy"]


def test_every_ray_pod_kind_has_a_network_policy() -> None:
    labelled = {t["metadata"]["labels"][COMPONENT] for _, d in RAY_DOCS for t in templates(cluster(d))}
    assert labelled == {"serving", "reindex", "training"}
    assert {p["spec"]["podSelector"]["matchLabels"][COMPONENT] for p in _policies()} == labelled
    for _, doc in RAY_DOCS:
        for template in templates(cluster(doc)):
            assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "retrec"


@pytest.mark.parametrize("component", ["serving", "reindex", "training"])
def test_network_policy_keeps_ray_ports_inside_and_the_dashboard_to_the_operator(component: str) -> None:
    (policy,) = [p for p in _policies() if p["spec"]["podSelector"]["matchLabels"].get(COMPONENT) == component]
    own = policy["spec"]["podSelector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert any(not ports and [p.get("podSelector", {}).get("matchLabels") for p in peers] == [own]
               for peers, ports in _rules(policy)), "the pods of one deployment must reach each other"
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


def test_the_event_broker_is_durable_and_reached_only_by_serving_and_the_online_trainer() -> None:
    import shlex

    import yaml

    from tests.k8s.manifests import CONFIGS

    docs = {d["kind"]: d for d in yaml_docs(K8S / "base" / "events.yaml")}
    (redis,) = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"  # acknowledged events survive a restart
    assert docs["StatefulSet"]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    (rule,) = docs["NetworkPolicy"]["spec"]["ingress"]
    assert {p["podSelector"]["matchLabels"][COMPONENT] for p in rule["from"]} == {"serving", "training"}
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    config = yaml.safe_load((CONFIGS / "serve-k8s.yaml").read_text())["applications"][0]["args"]
    job = next(d for w, d in JOBS if d["metadata"]["name"] == "retrec-train-online")
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[args.index("--events") + 1] == config["events"]["log"]  # one log, written and read
    assert config["events"]["log"].startswith(f"redis://{docs['Service']['metadata']['name']}:6379/")
    online = {r["bundle"] for r in config["recommenders"].values() if r.get("online")}
    assert online == {args[args.index("--out") + 1]}  # serving follows what the trainer writes


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] in ("RayService", "RayJob"):
        return [t["spec"] for t in templates(cluster(doc))]
    return [doc["spec"]["template"]["spec"]]


@pytest.mark.parametrize("folder", ["base", "overlays/cpu", "overlays/gpu", "overlays/sharded", "jobs"])
def test_every_pod_runs_unprivileged_without_a_service_account_token(folder: str) -> None:
    """Issue 44: no pod gets a Kubernetes API token; each runs as a non-root user with the runtime's seccomp
    profile, and no container can gain privileges (the Ray image's passwordless sudo stays useless)."""
    docs = [d for d in (kustomize(K8S / folder) if (K8S / folder / "kustomization.yaml").is_file()
                        else [d for p in sorted((K8S / folder).glob("*.yaml")) for d in yaml_docs(p)])
            if isinstance(d, dict) and d.get("kind") in ("RayService", "RayJob", "StatefulSet", "Deployment")]
    assert docs
    for doc in docs:
        for spec in _pod_specs(doc):
            where = f"{doc['kind']} {doc['metadata']['name']}"
            assert spec.get("automountServiceAccountToken") is False, where
            ctx = spec.get("securityContext") or {}
            assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, where
            assert (ctx.get("seccompProfile") or {}).get("type") == "RuntimeDefault", where
            for container in spec["containers"]:
                cctx = container.get("securityContext") or {}
                assert cctx.get("allowPrivilegeEscalation") is False, f"{where}: {container['name']}"
                assert cctx.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: {container['name']}"


@pytest.mark.parametrize("component", ["serving", "reindex", "training"])
def test_egress_reaches_only_its_own_pods_dns_and_the_event_broker(component: str) -> None:
    """Issue 44: a compromised pod reaches no Kubernetes API, no internet, no other Ray deployment."""
    (policy,) = [p for p in _policies() if p["spec"]["podSelector"]["matchLabels"].get(COMPONENT) == component]
    allowed = []
    for rule in policy["spec"]["egress"]:
        assert rule.get("to"), "an egress rule without 'to' allows every destination"
        ports = {(p["port"], p["protocol"]) for p in rule.get("ports", [])}
        for peer in rule["to"]:
            assert "ipBlock" not in peer
            labels = peer["podSelector"]["matchLabels"]
            namespace = (peer.get("namespaceSelector") or {}).get("matchLabels")
            allowed.append((labels.get(COMPONENT) or labels.get("k8s-app"), namespace, frozenset(ports)))
    assert sorted(allowed, key=str) == sorted([
        (component, None, frozenset()),
        ("kube-dns", {"kubernetes.io/metadata.name": "kube-system"}, frozenset({(53, "UDP"), (53, "TCP")})),
        ("events", None, frozenset({(6379, "TCP")}))], key=str)
