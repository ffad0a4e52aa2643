"""The RayService's serve config has one source per variant — configs/serve-k8s.yaml (CPU),
configs/serve-k8s-gpu.yaml (k8s/overlays/gpu) and configs/serve-k8s-sharded.yaml (k8s/overlays/sharded) — that
``retrec serve --config FILE`` accepts too; the variants' images, GPU worker group and capacity; the zero-downtime
upgrade strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import CONFIGS, K8S, cluster, cpus, groups, kustomize, parse_retrec, rendered

VARIANTS = {"base": CONFIGS / "serve-k8s.yaml", "overlays/cpu": CONFIGS / "serve-k8s.yaml",
            "overlays/gpu": CONFIGS / "serve-k8s-gpu.yaml", "overlays/sharded": CONFIGS / "serve-k8s-sharded.yaml"}
IMAGES = {"base": "retrec:latest", "overlays/cpu": "retrec:cpu", "overlays/gpu": "retrec:gpu",
          "overlays/sharded": "retrec:cpu", "jobs": "retrec:latest", "overlays/cpu/jobs": "retrec:cpu",
          "overlays/gpu/jobs": "retrec:gpu", "overlays/sharded/jobs": "retrec:cpu"}
GPU = "nvidia.com/gpu"


def _service(folder: str) -> dict[str, Any]:
    (service,) = rendered(folder, "RayService", "retrec")
    return service


def _args(config: dict[str, Any]) -> dict[str, Any]:
    (application,) = config["applications"]
    return application["args"]


@pytest.mark.parametrize("folder", VARIANTS)
def test_serve_config_v2_is_the_config_file(folder: str) -> None:
    embedded = yaml.safe_load(_service(folder)["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load(VARIANTS[folder].read_text()), \
        f"{folder}: serveConfigV2 differs from {VARIANTS[folder].name}: copy the file into the manifest"


@pytest.mark.parametrize("path", sorted(set(VARIANTS.values())), ids=lambda p: p.name)
def test_the_config_file_is_what_retrec_serve_accepts(path: Path) -> None:
    from retrec.serving.config import ServingConfig, check_exposure
    from retrec.serving.launch import load_serve_config, serve_env

    data = load_serve_config(path)  # what `retrec serve --config` reads: Ray's ServeDeploySchema
    cfg = ServingConfig.model_validate(_args(data))  # what build_app validates
    check_exposure(cfg, data["http_options"]["host"])
    assert data["applications"][0]["import_path"] == "retrec.serving.app:build_app"
    assert cfg.auth.mode == "keys" and cfg.auth.api_keys_file and not cfg.admin.enabled
    assert all(Path(p).is_absolute() for p in [*(r.index for r in cfg.retrievers.values()),
                                               *(r.encoder for r in cfg.retrievers.values() if r.encoder),
                                               *(r.bundle for r in cfg.recommenders.values())])
    default = yaml.safe_load((CONFIGS / "serve.yaml").read_text())
    assert serve_env(data) == serve_env(default)  # the Ray Serve settings of configs/serve.yaml
    assert parse_retrec(["serve", "--config", str(path)])[0] == ("serve",)


@pytest.mark.parametrize("folder", VARIANTS)
def test_every_ray_pod_gets_the_serve_settings_and_a_metrics_port(folder: str) -> None:
    from retrec.serving.launch import serve_env

    service = _service(folder)
    env = serve_env(yaml.safe_load(service["spec"]["serveConfigV2"]))
    for name, group in groups(cluster(service)).items():
        (container,) = group["template"]["spec"]["containers"]
        values = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert {k: values.get(k) for k in env} == env, name  # proxies and controllers run outside the app
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        assert str(ports.get("metrics")) == group["rayStartParams"]["metrics-export-port"], name


@pytest.mark.parametrize("folder", VARIANTS)
def test_upgrades_start_a_new_cluster(folder: str) -> None:
    """KubeRay's zero-downtime strategy: a rayClusterConfig change brings up a second cluster and moves the
    traffic once it is healthy (the CRD types it as a string; KubeRay knows NewCluster,
    NewClusterWithIncrementalUpgrade — which needs a Gateway — and None)."""
    assert _service(folder)["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    readme = (K8S / "README.md").read_text()
    assert "upgradeStrategy" in readme and "NewCluster" in readme


@pytest.mark.parametrize("folder", IMAGES)
def test_each_variant_runs_its_own_image(folder: str) -> None:
    for doc in kustomize(K8S / folder):
        for template in _templates(doc):
            assert {c["image"] for c in template["spec"]["containers"]} == {IMAGES[folder]}, folder


def _templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] not in ("RayService", "RayJob"):
        return []
    return [g["template"] for g in groups(cluster(doc)).values()]


def _gpus(group: dict[str, Any]) -> float:
    (container,) = group["template"]["spec"]["containers"]
    return float(container.get("resources", {}).get("limits", {}).get(GPU, 0))


@pytest.mark.parametrize("folder", ["base", "overlays/cpu", "jobs", "overlays/cpu/jobs", "overlays/sharded",
                                    "overlays/sharded/jobs"])
def test_the_cpu_variant_asks_for_no_gpu(folder: str) -> None:
    for doc in kustomize(K8S / folder):
        assert GPU not in yaml.safe_dump(doc), (folder, doc["metadata"]["name"])


def test_the_gpu_variant_serves_the_encoders_on_gpu_workers() -> None:
    service = _service("overlays/gpu")
    gpu_groups = {n: g for n, g in groups(cluster(service)).items() if _gpus(g)}
    assert set(gpu_groups) == {"gpu"} and "cpu" in groups(cluster(service))
    group = gpu_groups["gpu"]
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["requests"][GPU] == container["resources"]["limits"][GPU]
    assert any(t.get("key") == GPU for t in group["template"]["spec"].get("tolerations", []))
    capacity = sum(_gpus(g) * g["replicas"] for g in gpu_groups.values())
    args = _args(yaml.safe_load(service["spec"]["serveConfigV2"]))
    wanted = args["encoder"]["replicas"]["replicas"] * args["encoder"]["replicas"]["num_gpus"]
    assert args["encoder"]["placement"] == "deployment" and 0 < wanted <= capacity
    per_replica_cpu = args["encoder"]["replicas"]["num_cpus"]
    assert per_replica_cpu <= cpus(container["resources"]["limits"]["cpu"])


def test_the_gpu_jobs_encode_on_gpu_workers() -> None:
    (job,) = rendered("overlays/gpu/jobs", "RayJob", "retrec-reindex-dense")
    assert [n for n, g in groups(cluster(job)).items() if _gpus(g)] == ["encode"]
    for other in rendered("overlays/gpu/jobs", "RayJob"):
        if other["metadata"]["name"] != "retrec-reindex-dense":  # training is CPU PyTorch: no GPU to hold idle
            assert not any(_gpus(g) for g in groups(cluster(other)).values())
