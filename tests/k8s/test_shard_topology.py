"""k8s/overlays/sharded: the dense index's shards across Ray nodes. Every Ray custom resource the serve config pins a
replica to is offered by exactly one worker group (rayStartParams ``resources``, parsed as KubeRay's format is:
quoted JSON, literal backslashes), the groups hold every pinned replica (units and pods: a shard's replicas on
different pods), nothing unpinned lands on the shard groups, the reindex job writes as many shards as the config
pins, and the README documents it. (CRD validation, images, serve settings: test_manifests / test_serve_config.)"""

from __future__ import annotations

import json
import math
import shlex
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import K8S, cluster, groups, parse_retrec, rendered, retrec_invocations

FOLDER = "overlays/sharded"


def _service() -> dict[str, Any]:
    (service,) = rendered(FOLDER, "RayService", "retrec")
    return service


def _args() -> dict[str, Any]:
    (application,) = yaml.safe_load(_service()["spec"]["serveConfigV2"])["applications"]
    return application["args"]


def offered(ray_start_params: dict[str, str]) -> dict[str, float]:
    """A group's custom resources: ``resources: '"{\\"name\\": 2}"'`` is passed to ``ray start --resources=VALUE`` in
    a shell, which drops the outer quotes and the backslashes; Ray reads the JSON left."""
    value = ray_start_params.get("resources")
    if value is None:
        return {}
    (word,) = shlex.split(f"--resources={value}")
    return json.loads(word.split("=", 1)[1])


def test_offered_reads_kuberays_format() -> None:
    assert offered({"resources": '"{\\"Custom1\\": 1, \\"Custom2\\": 5}"'}) == {"Custom1": 1, "Custom2": 5}
    assert offered({}) == {}
    with pytest.raises(ValueError):  # without the outer quotes the shell splits the value at its space
        offered({"resources": '{\\"Custom1\\": 1}'})


def _pinned_replicas() -> list[tuple[str, dict[str, float], int, int | None, float]]:
    """(deployment, resources, replicas, max_replicas_per_node, num_cpus) of every replica set the config pins."""
    from retrec.serving.config import ServingConfig

    cfg = ServingConfig.model_validate(_args())
    out = []
    for name, rc in cfg.retrievers.items():
        count = len(rc.shard_resources or [None])
        for i in range(count):
            options = rc.shard_options(name, i, count)
            resources = options["ray_actor_options"].get("resources")
            if resources:
                out.append((options["name"], resources, options["num_replicas"],
                            options.get("max_replicas_per_node"), options["ray_actor_options"]["num_cpus"]))
    for role, opts in [("ingress", cfg.ingress), ("encoder", cfg.encoder.replicas),
                       *[(f"recommender-{n}", r.replicas) for n, r in cfg.recommenders.items()]]:
        assert not opts.resources, f"{role}: only shards are pinned in this variant"
    return out


def test_every_pinned_resource_is_offered_by_one_group_that_holds_its_replicas() -> None:
    worker_groups = {n: g for n, g in groups(cluster(_service())).items() if n != "head"}
    offers = {n: offered(g["rayStartParams"]) for n, g in worker_groups.items()}
    pinned = _pinned_replicas()
    assert {d for d, *_ in pinned} == {f"dense-shard-{i}" for i in range(4)}
    used: dict[str, float] = {}
    for deployment, resources, replicas, per_node, num_cpus in pinned:
        for resource, quantity in resources.items():
            (group,) = [n for n, o in offers.items() if resource in o]  # exactly one group offers it
            pods = worker_groups[group]["replicas"]
            assert worker_groups[group]["minReplicas"] == pods == worker_groups[group]["maxReplicas"], group
            assert per_node == 1 and replicas <= pods, f"{deployment}: its replicas on different pods of {group}"
            assert quantity <= offers[group][resource], deployment
            used[resource] = used.get(resource, 0) + replicas * quantity
        assert num_cpus == 0, f"{deployment}: the shard groups give Ray no CPUs"
    for group, offer in offers.items():
        for resource, per_pod in offer.items():
            capacity = per_pod * worker_groups[group]["replicas"]
            assert 0 < used.get(resource, 0) <= capacity, (group, resource, used.get(resource), capacity)


def test_nothing_unpinned_lands_on_the_shard_groups() -> None:
    """The shard groups offer Ray no CPUs; every unpinned role asks for CPUs (so Ray places it on the cpu group)."""
    worker_groups = {n: g for n, g in groups(cluster(_service())).items() if n != "head"}
    shard_groups = {n for n, g in worker_groups.items() if offered(g["rayStartParams"])}
    assert shard_groups == {"shards-a", "shards-b"}
    for name in shard_groups:
        assert worker_groups[name]["rayStartParams"].get("num-cpus") == "0", name
    args = _args()
    unpinned = [args["ingress"], args["encoder"]["replicas"], *(r["replicas"] for r in args["recommenders"].values()),
                *(r.get("shards", {}) for r in args["retrievers"].values() if "shard_resources" not in r)]
    assert all(float(opts.get("num_cpus", 0.25)) > 0 for opts in unpinned)
    # the cpu group holds them: CPUs asked for by every unpinned replica fit the cpu group's pods
    cpu = worker_groups["cpu"]
    capacity = float(cpu["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) * cpu["replicas"]
    asked = sum(float(o.get("num_cpus", 0.25)) * o.get("replicas", 1) for o in unpinned)
    assert asked <= capacity, (asked, capacity)


def test_the_reindex_job_writes_the_pinned_shard_count() -> None:
    (job,) = rendered(f"{FOLDER}/jobs", "RayJob", "retrec-reindex-dense")
    ((_, argv),) = retrec_invocations(job)
    path, params = parse_retrec(argv)
    dense = _args()["retrievers"]["dense"]
    assert path == ("reindex",) and params["shards"] == len(dense["shard_resources"]) == 4
    assert dense["index"] == str(params["out"] / "current") and dense["encoder"] == str(params["model"])
    assert params["actors"] * (params["threads"] or 1) == sum(  # the same encode group as k8s/jobs
        math.floor(float(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])) * g["replicas"]
        for n, g in groups(cluster(job)).items() if n != "head")


def test_the_readme_documents_the_topology() -> None:
    readme = (K8S / "README.md").read_text()
    for words in ("overlays/sharded", "shard_resources", "rayStartParams", "max_replicas_per_node", "--ray-address"):
        assert words in readme, words
