"""Publish ``user_config`` values through the Serve controller and wait until every replica has applied them.

A deployment's ``user_config`` is what Ray Serve broadcasts: the controller calls ``reconfigure`` on every
replica of the deployment when it changes (in place, no restart), re-applies it to every replica it starts
later, and keeps it in its checkpoint across controller restarts. :class:`ServeRollout` is how an index
swap (:mod:`retrec.serving.versions`) reaches every replica: it reads the application's deployed config
from the controller, sets the ``user_config`` of the named deployments as ``deployments:`` overrides (the
import path and ``args`` stay as they are, so nothing is rebuilt or restarted), applies it, and returns once
each named deployment is ``HEALTHY`` with that ``user_config`` as its target — i.e. every replica has run
``reconfigure`` with it.

The application must have been deployed from a config (``retrec serve``, ``serve run CONFIG``,
``serve deploy``, KubeRay). A swap is a runtime override: redeploying the config file (or a changed
``serveConfigV2``) returns to what the file says. Runs blocking controller calls; call :meth:`publish`
from a coroutine (it uses a worker thread).

With ``merge=True`` each named deployment's new ``user_config`` is its current target with the given
top-level mappings merged in (``{"indexes": {"bm25": path}}`` changes that entry only): a swap of one retriever
never reverts another's made meanwhile elsewhere (:mod:`retrec.serving.swaps` runs one swap at a time).

Example::

    rollout = ServeRollout()                      # inside a replica: its own application
    await rollout.publish({"bm25-shard-0": {"versions": [old_ref, new_ref]}})
    await rollout.publish({"Ingress": {"indexes": {"bm25": new_path}}}, merge=True)
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

_LOCK = threading.Lock()  # one read-modify-write of the deployed config at a time per process


class RolloutError(RuntimeError):
    """The controller did not apply a ``user_config`` (not deployed from a config, unhealthy, timed out)."""


class ServeRollout:
    """``user_config`` updates of deployments of one application, through the Serve controller."""

    def __init__(self, app_name: str | None = None, timeout_s: float = 120.0, poll_s: float = 0.1) -> None:
        self.app_name, self.timeout_s, self.poll_s = app_name, timeout_s, poll_s

    async def publish(self, user_configs: dict[str, Any], merge: bool = False) -> None:
        """Set ``{deployment: user_config}`` (``merge``: into each one's current target) and wait until every
        replica of each has applied it."""
        await asyncio.to_thread(self._publish, user_configs, merge)

    def _app(self) -> str:
        if self.app_name is None:
            from ray import serve

            self.app_name = serve.get_replica_context().app_name
        return self.app_name

    def _publish(self, user_configs: dict[str, Any], merge: bool = False) -> None:
        import ray
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        app_name = self._app()
        client = _get_global_client()
        controller = client._controller
        with _LOCK:
            configs = ray.get(controller.get_app_configs.remote())
            if app_name not in configs:
                raise RolloutError(f"application {app_name!r} was not deployed from a config; index swaps need "
                                   "`retrec serve`, `serve run CONFIG`, `serve deploy` or KubeRay")
            apps = {name: cfg.model_dump(exclude_unset=True) for name, cfg in configs.items()}
            app = apps[app_name]
            deployments = {d["name"]: d for d in app.get("deployments") or []}
            if merge:
                targets = _targets(client, app_name)
                user_configs = {name: merged(targets.get(name), update) for name, update in user_configs.items()}
            changed = False
            for name, user_config in user_configs.items():
                entry = deployments.setdefault(name, {"name": name})
                if entry.get("user_config") != user_config:
                    entry["user_config"] = user_config
                    changed = True
            if changed:
                app["deployments"] = list(deployments.values())
                schema = ServeDeploySchema.model_validate({"applications": list(apps.values())})
                ray.get(controller.apply_config.remote(schema))
        self._wait(client, app_name, user_configs)

    def _wait(self, client: Any, app_name: str, user_configs: dict[str, Any]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            app = client.get_serve_details().get("applications", {}).get(app_name) or {}
            deployments = app.get("deployments") or {}
            targets = _targets(client, app_name, app)
            pending, failed = [], []
            for name, user_config in user_configs.items():
                d = deployments.get(name) or {}
                target = targets.get(name)
                if target == user_config and d.get("status") == "HEALTHY":
                    continue
                pending.append(name)
                if target == user_config and d.get("status") == "DEPLOY_FAILED":  # UNHEALTHY may recover
                    failed.append(name)
            if not pending:
                return
            if failed:
                raise RolloutError(f"deployment(s) {', '.join(failed)} failed to apply the new configuration")
            if time.monotonic() > deadline:
                raise RolloutError(f"deployment(s) {', '.join(pending)} did not apply the new configuration "
                                   f"within {self.timeout_s:.0f} s")
            time.sleep(self.poll_s)


def merged(current: Any, update: dict[str, Any]) -> dict[str, Any]:
    """``current`` with ``update``'s top-level mappings merged into its own (other values replaced).

    >>> merged({"indexes": {"a": "1", "b": "1"}, "digests": {"a": "x"}}, {"indexes": {"b": "2"}})
    {'indexes': {'a': '1', 'b': '2'}, 'digests': {'a': 'x'}}
    """
    out = dict(current) if isinstance(current, dict) else {}
    for key, value in update.items():
        old = out.get(key)
        out[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def _targets(client: Any, app_name: str, app: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each deployment's target ``user_config`` (what its replicas run, or are being moved to)."""
    if app is None:
        app = client.get_serve_details().get("applications", {}).get(app_name) or {}
    return {name: (d.get("deployment_config") or {}).get("user_config")
            for name, d in (app.get("deployments") or {}).items()}
