"""`retrec serve` and `retrec demo`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from retrec.bundle import BundleError
from retrec.cli.common import _fail, app


@app.command("serve")
def serve_cmd(
    config: Annotated[Path, typer.Option(help="Ray Serve config YAML (e.g. configs/serve.yaml)")],
    host: Annotated[str | None, typer.Option(help="bind address (default: the file's, else 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: the file's, else 8000)")] = None,
) -> None:
    """Serve search and recommendation over HTTP (Ray Serve) until interrupted."""
    from retrec.serving.launch import DEFAULT_HOST, STOP_DRAIN_S, direct_url, load_serve_config, start, stop

    try:
        spec = load_serve_config(config)
        url = start(spec, host=host, port=port)
    except (BundleError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"serving at {url}  (OpenAPI: {url}/docs; Ctrl-C stops)")
    direct = direct_url(spec, host or (spec.get("http_options") or {}).get("host") or DEFAULT_HOST)
    if direct is not None:
        typer.echo(f"direct ingress (no proxy hop): {direct} and up, one port per ingress replica")
    import signal

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` / k8s stop: shut Serve and Ray down cleanly too
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:  # bounded (launch.STOP_DRAIN_S + Ray's shutdown): a second Ctrl-C must not cut it short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        typer.echo("stopping ...")
        _stop_or_kill(stop, STOP_DRAIN_S + STOP_GRACE_S)


STOP_GRACE_S = 6.0  # Serve's bounded drain, then this long for Ray's own shutdown before its processes are killed


def _stop_or_kill(stop: Callable[[], None], limit_s: float) -> None:
    """Run ``stop``; if it has not returned within ``limit_s`` (a local Ray whose GCS or raylet took the same
    Ctrl-C can leave its shutdown waiting on them), kill this process's descendants and exit: ``retrec serve``
    always stops, and leaves no Ray process behind."""
    import os
    import threading

    from retrec.process_env import kill_descendants

    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(limit_s):
            killed = kill_descendants()
            typer.echo(f"Ray did not shut down within {limit_s:.0f} s: killed its {killed} processes", err=True)
            os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        stop()
    finally:
        done.set()


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="where data, bundles and runs are written")] = Path("runs/demo"),
) -> None:
    """Run the whole product end to end on the embedded default dataset (no download)."""
    from retrec.pipelines.demo import run_demo

    try:
        run_demo(workdir)
    except FileExistsError as exc:
        raise _fail(str(exc)) from exc
