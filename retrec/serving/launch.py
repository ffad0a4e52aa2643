"""Start and stop the application from a serve config YAML (what ``retrec serve`` and the demo use).

The YAML is Ray Serve's own config format (``http_options``, ``applications`` with ``import_path:
retrec.serving.app:build_app`` and ``args``), so the same file also works with ``serve run`` and
``serve deploy``. HTTP binds 127.0.0.1 unless the file or ``host`` says otherwise, and the local Ray that
:func:`start` launches is a loopback-only node (:func:`init_local_ray`): its GCS, raylet, workers and agents
listen on 127.0.0.1, with Ray's token auth (on by default for a local Ray 2.60 cluster). Ray Serve 2.60 binds
each replica's inter-deployment gRPC server to ``[::]`` itself (not configurable); it refuses calls without
the cluster's token. The Ray Serve latency settings are the applications' ``runtime_env.env_vars`` in that
file (:func:`serve_env`): Ray gives them to every replica on any path, and :func:`start` exports them to the
local Ray it starts (proxy, controller).

**Direct ingress** (opt-in): with ``RAY_SERVE_ENABLE_DIRECT_INGRESS: "1"`` in the application's
``runtime_env.env_vars``, Ray Serve 2.60 also runs an HTTP server inside each ingress replica — on the same
host as ``http_options``, ports from ``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT`` (30000) upward, the application
mounted at its ``route_prefix`` — so a request skips the proxy hop (measured: benchmarks/RESULTS.md, "Serving
throughput"). The proxy URL keeps working; every route answers through the same app (keys, limits, metrics).
A replica that restarts may come back on another port, so put a balancer that follows the replicas in front,
or run one ingress replica and use :func:`direct_url`. Ray calls the flag experimental; it is off by default.

**A Ray cluster** (``retrec serve --ray-address HOST:PORT``, or ``$RAY_ADDRESS``; :func:`cluster_address`, the
rule ``retrec reindex --ray-address`` follows too): :func:`start` joins it instead of starting a local Ray, and
Serve places each replica on a node that offers what its options ask for — e.g. index shards pinned to nodes by
custom resources (``shards.resources`` / ``shard_resources`` in the serve config; ``ray start --resources``,
KubeRay's ``rayStartParams.resources``). Keys in ``api_keys_env`` are then read from the nodes' environment.

Plugin kinds (``$RETREC_PLUGINS``, see :mod:`retrec.kinds`): the local Ray that :func:`start` launches
inherits this process's environment, and Ray puts the driver's working directory on its workers' path, so
set the variable (and run from the folder the plugin modules import from, or set ``PYTHONPATH``) before
starting; on a cluster, set it in the nodes' environment or the job's ``runtime_env.env_vars``.

Example::

    url = start(load_serve_config("configs/serve.yaml"), port=free_port())
    httpx.post(f"{url}/v1/search", json={"query": "scurvy", "k": 3})
    stop()
    url = start(load_serve_config("configs/serve.yaml"), address="127.0.0.1:6379")   # a running cluster
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from retrec.process_env import start_local_ray
from retrec.serving.config import ServingConfig, check_exposure

DEFAULT_HOST = "127.0.0.1"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "serve.yaml"
STOP_DRAIN_S = 2.0  # what in-flight requests get when serving stops (Ctrl-C, SIGTERM)
log = logging.getLogger("retrec.serving")


def serve_env(config: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment a serve config gives its replicas: its applications' ``runtime_env.env_vars``.

    That is where the Ray Serve latency settings live (``configs/serve.yaml``; the one copy): Ray applies them
    to every replica of the application under ``serve run``, ``serve deploy`` and KubeRay. ``None``: the
    default config file's (``{}`` when this is not a source checkout). Two applications giving one variable
    different values is an error (a local Ray has one environment).
    """
    if config is None:
        if not DEFAULT_CONFIG.is_file():
            return {}
        config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8")) or {}
    env: dict[str, str] = {}
    for app in config.get("applications") or []:
        for key, value in ((app.get("runtime_env") or {}).get("env_vars") or {}).items():
            if env.get(key, str(value)) != str(value):
                raise ValueError(f"runtime_env.env_vars.{key}: applications disagree ({env[key]!r}, {value!r})")
            env[key] = str(value)
    return env


DIRECT_INGRESS = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
DIRECT_INGRESS_PORT = "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"


def direct_url(config: dict[str, Any], host: str = DEFAULT_HOST) -> str | None:
    """The first ingress replica's own HTTP server (``http://HOST:PORT``) when the config turns direct ingress
    on (its ``runtime_env.env_vars``, else this environment), else ``None``."""
    env = {**{k: os.environ[k] for k in (DIRECT_INGRESS, DIRECT_INGRESS_PORT) if k in os.environ},
           **serve_env(config)}
    if env.get(DIRECT_INGRESS) != "1":
        return None
    return f"http://{host}:{int(env.get(DIRECT_INGRESS_PORT, '30000'))}"


def init_local_ray(num_cpus: int | None = None, config: dict[str, Any] | None = None,
                   dashboard: bool = False) -> str | None:
    """Start a one-machine Ray whose node address is 127.0.0.1, so none of its ports (GCS, raylet, object
    manager, workers, dashboard agent, runtime-env agent) listens on a routable address; with the config's
    Serve settings (:func:`apply_serve_env`). Ray's token auth stays as Ray sets it (``RAY_AUTH_MODE``; on by
    default). ``dashboard``: Ray's dashboard on 127.0.0.1 too (its URL is returned)."""
    apply_serve_env(config)
    return start_local_ray(num_cpus, dashboard=dashboard)


def apply_serve_env(config: dict[str, Any] | None = None) -> None:
    """Export :func:`serve_env` into this process's environment, before it starts a local Ray: the Ray
    processes outside the application (proxy, controller) then run with the same settings as its replicas."""
    os.environ.update(serve_env(config))


DASHBOARD: dict[str, str | None] = {"url": None}  # the local Ray's dashboard, when start(dashboard=True) started it


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def load_serve_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and validate a Serve config file (Ray's schema; our ``args`` are checked at build time)."""
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    ServeDeploySchema.model_validate(data)
    return data


def wait_ready(url: str, timeout_s: float = 120.0, headers: dict[str, str] | None = None) -> None:
    """Poll ``GET {url}/readyz`` until it answers 200 (raises TimeoutError)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=5.0, headers=headers)
            if r.status_code == 200:
                return
            last = r.text[:200]
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout_s} s: {last}")


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to join: ``address``, else ``$RAY_ADDRESS``; ``None`` (or ``local``): start a local Ray.
    The same rule as ``retrec reindex --ray-address`` (:mod:`retrec.pipelines.reindex.parts`).

    >>> cluster_address("127.0.0.1:6379")
    '127.0.0.1:6379'
    """
    chosen = address or os.environ.get("RAY_ADDRESS") or None
    return None if chosen == "local" else chosen


def join_ray(address: str) -> None:
    """Connect this process to the running Ray cluster at ``address`` (``host:port`` of its GCS, or ``auto``).

    Serve's controller and proxies, when this call's :func:`deploy` starts them there, run with the cluster
    nodes' environment; the config's ``runtime_env.env_vars`` still reach every replica.
    """
    import ray

    try:
        ray.init(address=address, configure_logging=False, log_to_driver=False)
    except ConnectionError as exc:  # no cluster there, or it refused this process's token (Ray's log says which)
        raise ConnectionError(f"could not join the Ray cluster at {address} ({exc}); a cluster with Ray's token "
                              "auth needs RAY_AUTH_MODE=token here and its token (RAY_AUTH_TOKEN or "
                              "~/.ray/auth_token): an explicit address never turns token auth on") from exc
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    log.info("joined the Ray cluster at %s: %d node(s), resources %s", address, len(nodes),
             {k: v for k, v in sorted(ray.cluster_resources().items()) if not k.startswith("node:")})


def start(config: dict[str, Any], *, host: str | None = None, port: int | None = None,
          num_cpus: int | None = None, wait: bool = True, address: str | None = None, dashboard: bool = False) -> str:
    """Start Serve and every application, on the Ray this process is connected to, else on the cluster at
    ``address`` (or ``$RAY_ADDRESS``: :func:`cluster_address`), else on a local Ray it starts; returns the base
    URL. ``num_cpus`` sizes a local Ray only; ``dashboard`` keeps a local Ray's dashboard on (127.0.0.1; its URL
    in :data:`DASHBOARD`)."""
    import ray

    from retrec.process_env import configure_process

    configure_process()
    http = dict(config.get("http_options") or {})
    http["host"] = host or http.get("host") or DEFAULT_HOST
    http["port"] = int(port or http.get("port") or 8000)
    joining = None if ray.is_initialized() else cluster_address(address)
    if joining and num_cpus is not None:
        raise ValueError("num_cpus sizes a local Ray; a Ray cluster (--ray-address / $RAY_ADDRESS) has its own")
    if dashboard and (joining or ray.is_initialized()):
        raise ValueError("--dashboard starts the dashboard of the local Ray retrec starts; a running Ray or "
                         "cluster has its own (see its ray start --include-dashboard)")
    preflight(config, http["host"], local=not ray.is_initialized() and not joining)
    if joining:
        join_ray(joining)
    elif not ray.is_initialized():
        DASHBOARD["url"] = init_local_ray(num_cpus, config, dashboard=dashboard)
    prefixes = deploy({**config, "http_options": http})
    url = f"http://{http['host']}:{http['port']}"
    if wait:
        for prefix in prefixes:
            wait_ready(url + prefix)
        direct = direct_url(config, http["host"])
        if direct is not None and len(prefixes) == 1:
            wait_ready(direct + prefixes[0])
    return url + (prefixes[0] if len(prefixes) == 1 else "")


def preflight(config: dict[str, Any], host: str, *, local: bool) -> None:
    """Refuse, before Ray starts, what the application would refuse later: ``auth.mode: none`` on a host that is
    not loopback and, when Ray runs here (``local``: keys are read from this environment; a cluster's replicas
    read their nodes'), ``auth.mode: keys`` without a key or an enabled admin plane without an admin key."""
    from retrec.serving.middleware import guard_settings

    for spec in config.get("applications") or []:
        cfg = ServingConfig.model_validate({"base_dir": os.getcwd(), **(spec.get("args") or {})})
        check_exposure(cfg, host)
        if local:
            guard_settings(cfg)


def deploy(config: dict[str, Any]) -> list[str]:
    """Deploy (or update) every application of a Serve config, the way ``serve run``/``serve deploy`` do.

    Applications are built from ``import_path`` + ``args`` by the Serve controller, so Ray's
    ``deployments:`` overrides apply, and an update that changes only a ``user_config`` (e.g. the
    ``indexes`` arg) reconfigures replicas in place instead of restarting them. Relative bundle paths
    resolve against this process's working directory. Returns the route prefixes.
    """
    from ray.serve._private import api as serve_api  # the client `serve run CONFIG` itself uses
    from ray.serve.schema import ServeDeploySchema

    apps = []
    for spec in config.get("applications") or []:
        import_path = spec.get("import_path", "retrec.serving.app:build_app")
        if import_path != "retrec.serving.app:build_app":
            raise ValueError(f"application {spec.get('name')!r}: import_path {import_path!r} is not retrec's")
        args = {"base_dir": os.getcwd(), **(spec.get("args") or {})}
        ServingConfig.model_validate(args)  # fail here, with the message, rather than in the controller
        apps.append({"name": "retrec", "route_prefix": "/", **spec, "import_path": import_path, "args": args})
    schema = ServeDeploySchema.model_validate({**config, "applications": apps})
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(),
                                   proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=True)
    return [app["route_prefix"].rstrip("/") for app in apps]


def stop(drain_s: float = STOP_DRAIN_S) -> None:
    """Shut Serve down, giving in-flight requests up to ``drain_s``, then Ray: a local Ray that :func:`start`
    launched goes with all its processes (raylet, GCS, workers); a cluster it connected to keeps running, without
    Serve (as after ``serve run``'s Ctrl-C).

    Serve's own shutdown waits up to 30 s for its controller (and longer when a worker it waits on was hit
    by the same Ctrl-C); bounded here, so ``retrec serve`` stops within about ``drain_s`` + 3 s.
    """
    import ray
    from ray.serve import context as serve_context

    if not ray.is_initialized():
        return
    try:
        client = serve_context._get_global_client(raise_if_no_controller_running=False)
        if client is not None:
            quiet = logging.getLogger("ray.serve")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # its "Controller failed to shut down within ..." is expected here
            try:
                client.shutdown(timeout_s=drain_s)
            finally:
                quiet.setLevel(level)
        serve_context._set_global_client(None)
    except Exception as exc:  # Serve already gone (e.g. its controller was killed): Ray still shuts down
        log.warning("serve shutdown: %s", type(exc).__name__)
    finally:
        ray.shutdown()


def servable_bundles(bundles: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(retrievers, recommenders)`` config entries for the bundles directly under ``bundles``, by kind.

    Each sub-folder with a manifest is looked up in :mod:`retrec.kinds`: an index kind becomes a retriever
    named after its folder (one searched with encoded queries only when a query-encoder bundle there fits it:
    the right kind and payload, and the kind's ``check`` hook passes), a recommender kind a recommender;
    other kinds are not served.
    """
    from retrec import kinds
    from retrec.bundle import BundleError, read_manifest

    found = []
    for folder in sorted(p for p in Path(bundles).resolve().iterdir() if (p / "manifest.json").is_file()):
        manifest = read_manifest(folder)
        try:
            found.append((folder, manifest, kinds.get(manifest.kind)))
        except kinds.UnknownKindError:
            continue
    encoders = [(f, m, k) for f, m, k in found if k.role == "query_encoder"]
    retrievers: dict[str, Any] = {}
    recommenders: dict[str, Any] = {}
    for folder, manifest, kind in found:
        if kind.role == "recommender":
            recommenders[folder.name] = {"bundle": str(folder)}
        if kind.role != "index":
            continue
        if not kind.needs_encoder:
            retrievers[folder.name] = {"index": str(folder)}
            continue
        check = kinds.resolve(kind.check) if kind.check else None
        for enc_folder, enc_manifest, enc_kind in encoders:
            if enc_kind.payload != kind.payload or (kind.encoder_kinds and enc_kind.kind not in kind.encoder_kinds):
                continue
            try:
                if check is not None:
                    check(manifest, enc_manifest)
            except BundleError:
                continue
            retrievers[folder.name] = {"index": str(folder), "encoder": str(enc_folder)}
            break
    return retrievers, recommenders


def demo_config(bundles: str | os.PathLike[str], port: int) -> dict[str, Any]:
    """A one-machine serve config for every servable bundle under ``bundles`` (see :func:`servable_bundles`),
    zero-CPU replicas."""
    light = {"replicas": 1, "num_cpus": 0}
    retrievers, recommenders = servable_bundles(bundles)
    for r in retrievers.values():
        r["shards"] = light
    for r in recommenders.values():
        r["replicas"] = light
    return {"http_options": {"host": DEFAULT_HOST, "port": port},
            "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                              "runtime_env": {"env_vars": serve_env()},
                              "args": {"retrievers": retrievers, "recommenders": recommenders,
                                       "encoder": {"replicas": {**light, "max_ongoing_requests": 64}},
                                       "ingress": light, "auth": {"mode": "none"}}}]}


def demo_round_trip(bundles: str | os.PathLike[str], query: str, history: list[str], k: int = 3, *,
                    admin_keys_env: str | None = None,
                    then: Callable[[str], list[dict]] | None = None) -> list[dict]:
    """Start the app on a free 127.0.0.1 port, send real requests, shut down; returns (request, response) pairs.

    With ``admin_keys_env`` (the variable holding the admin key) the admin endpoint is on, rooted at
    ``bundles``; ``then(url)`` runs while the app is up (e.g. a reindex and a swap) and adds its exchanges."""
    config = demo_config(bundles, free_port())
    args = config["applications"][0]["args"]
    if admin_keys_env is not None:
        args["admin"] = {"enabled": True, "keys_env": admin_keys_env, "models_root": str(Path(bundles).resolve())}
    url = start(config)
    exchanges = []
    try:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            retrievers = args["retrievers"]
            for retriever in [*retrievers, *(["hybrid"] if len(retrievers) > 1 else [])]:
                body = {"query": query, "k": k, "retriever": retriever}
                exchanges.append({"request": ["POST /v1/search", body],
                                  "response": client.post("/v1/search", json=body).json()})
            for model in args["recommenders"]:
                body = {"history": history, "k": k, "model": model}
                exchanges.append({"request": ["POST /v1/recommend", body],
                                  "response": client.post("/v1/recommend", json=body).json()})
        if then is not None:
            exchanges.extend(then(url))
    finally:
        stop()
    return exchanges
