"""Every ``retrec ...`` command line in k8s/ (RayJob entrypoints, container commands and args, ``bash -c`` scripts;
each file and each overlay's output) parses as a real subcommand with valid options, without running it; the
jobs wire together (training writes what reindex and serving read; a reindex job per served index kind, gated
by an evaluation) and put their work on their worker groups."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import (
    CONFIGS,
    PLACEHOLDER,
    CommandLineError,
    cluster,
    cpus,
    groups,
    parse_retrec,
    ray_documents,
    retrec_invocations,
    shell_commands,
)

INVOCATIONS = [(f"{where} {place}", args) for where, doc in ray_documents()
               for place, args in retrec_invocations(doc)]
JOBS = {d["metadata"]["name"]: d for w, d in ray_documents() if d["kind"] == "RayJob" and w.startswith("jobs/")}


def _parsed(name: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    ((_, args),) = retrec_invocations(JOBS[name])
    return parse_retrec(args)


@pytest.mark.parametrize(("where", "args"), INVOCATIONS, ids=[w for w, _ in INVOCATIONS])
def test_every_retrec_command_parses(where: str, args: list[str]) -> None:
    parse_retrec(args)


def test_the_commands_found_are_the_jobs() -> None:
    found = {(shlex.join(a[:2]), w.split(":")[0]) for w, a in INVOCATIONS}
    assert {c for c, _ in found} == {"reindex bm25", "reindex dense", "train dense", "train bert4rec", "train online"}
    assert {w for _, w in found} >= {"jobs/rayjob-train-dense.yaml", "overlays/gpu/jobs/ (kustomize)"}


@pytest.mark.parametrize("script", [
    "retrec reindex bm25 --data /data/scifact --out /models/x --evaldata /data/scifact",  # unknown option
    "retrec train dense --out /models/tasb-scifact",  # --data is required
    "retrec reindex bm2 --data /d --out /o",  # not an index kind
    "retrec reindex dense --data /d --out /o --actors many",  # not an int
    "retrec reindx bm25 --data /d --out /o",  # no such command
    "retrec train",  # a group without its subcommand
    "set -e; out=/models/x/$(date +%s); retrec index bm25 --data /d --out $out && retrec eval --data /d --indx $out",
    "bash -c 'v=1; retrec index bm25 --data /d --out /m/$v extra'",  # an extra argument, inside bash -c
])
def test_the_checker_rejects_broken_commands(script: str) -> None:
    invocations = [args for argv in shell_commands(script) if argv[0] == "retrec" for args in [argv[1:]]]
    assert invocations
    with pytest.raises(CommandLineError):
        for args in invocations:
            parse_retrec(args)


def test_shell_scripts_are_split_into_commands_with_variables_replaced() -> None:
    doc = {"spec": {"entrypoint": "bash -c 'set -euo pipefail; v=$(date -u +%Y%m%dT%H%M%SZ); out=/m/$v;\n"
                                  "retrec index bm25 --data /d --out $out && retrec eval --data /d --index \"${out}\""
                                  " --json | tee /m/$v.json'",
                    "template": {"spec": {"containers": [
                        {"name": "c", "command": ["/usr/bin/retrec"], "args": ["serve", "--config", "/c.yaml"]},
                        {"name": "d", "command": ["sh", "-c"], "args": ["OMP_NUM_THREADS=4 exec retrec demo"]}]}}}}
    assert [a for _, a in retrec_invocations(doc)] == [
        ["index", "bm25", "--data", "/d", "--out", PLACEHOLDER],
        ["eval", "--data", "/d", "--index", PLACEHOLDER, "--json"],
        ["serve", "--config", "/c.yaml"], ["demo"]]


def _serving() -> dict[str, Any]:
    (application,) = yaml.safe_load((CONFIGS / "serve-k8s.yaml").read_text())["applications"]
    return application["args"]


def test_a_gated_reindex_job_for_every_served_index() -> None:
    retrievers = _serving()["retrievers"]
    reindexed = {}
    for name in JOBS:
        path, params = _parsed(name)
        if path == ("reindex",):
            assert params["eval_data"] is not None, f"{name}: evaluate before `current` moves"
            assert params["swap"] is None, f"{name}: swapping needs the serving admin key"
            reindexed[params["kind"]] = params
    assert set(reindexed) == {"bm25", "dense"} == set(retrievers)
    for kind, params in reindexed.items():
        assert retrievers[kind]["index"] == str(params["out"] / "current")
        assert (params["model"] and str(params["model"])) == retrievers[kind].get("encoder"), kind


def test_training_jobs_write_the_bundles_that_reindex_and_serving_read() -> None:
    path, dense = _parsed("retrec-train-dense")
    assert path == ("train", "dense")
    assert _parsed("retrec-reindex-dense")[1]["model"] == dense["out"]
    assert _serving()["retrievers"]["dense"]["encoder"] == str(dense["out"])
    path, bert4rec = _parsed("retrec-train-bert4rec")
    assert path == ("train", "bert4rec")
    assert _serving()["recommenders"]["bert4rec"]["bundle"] == str(bert4rec["out"])
    for params in (dense, bert4rec):
        assert params["data"].parent == Path("/data") and params["out"].parent == Path("/models")


def _worker_cpus(job: dict[str, Any]) -> list[float]:
    return [cpus(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
            for name, g in groups(cluster(job)).items() if name != "head" for _ in range(g["replicas"])]


def _mounts(group: dict[str, Any]) -> dict[str, bool]:
    return {m["mountPath"]: bool(m.get("readOnly")) for m in group["template"]["spec"]["containers"][0].get(
        "volumeMounts", [])}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_jobs_work_on_their_worker_groups(name: str) -> None:
    """The head offers no CPUs, so Ray puts the work on the workers: the driver itself (entrypointNumCpus = a
    worker's CPUs), or the encoder actors (--actors x --threads = the workers' CPUs; the driver on the head)."""
    job = JOBS[name]
    head = groups(cluster(job))["head"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    workers = _worker_cpus(job)
    assert workers, "no worker group"
    path, params = _parsed(name)
    driver_cpus = job["spec"].get("entrypointNumCpus")
    if driver_cpus:
        assert driver_cpus == max(workers) and params.get("actors") is None
        driver = next(g for n, g in groups(cluster(job)).items() if n != "head")
    else:
        assert path == ("reindex",) and params["actors"] * (params["threads"] or 1) == sum(workers)
        driver = head
        for group_name, group in groups(cluster(job)).items():
            if group_name != "head":  # actors read the encoder bundle; the driver writes what they encode
                assert _mounts(group) == {"/models": True}
    mounts = _mounts(driver)
    assert mounts.get("/data") is True and mounts.get("/models") is False, "the driver reads /data, writes /models"
