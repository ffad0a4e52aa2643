"""`retrec serve` and `retrec demo`."""

from __future__ import annotations

import time
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
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster to join, HOST:PORT of its GCS (default: $RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    ] = None,
    dashboard: Annotated[bool, typer.Option(
        "--dashboard", help="keep Ray's dashboard on (bound to 127.0.0.1) for a local operator; a local Ray only")
    ] = False,
) -> None:
    """Serve search and recommendation over HTTP (Ray Serve) until interrupted; on a Ray cluster with
    --ray-address (Ctrl-C then shuts Serve down there, and leaves the cluster running)."""
    from retrec.serving.launch import DASHBOARD, DEFAULT_HOST, direct_url, load_serve_config, start, stop

    try:
        spec = load_serve_config(config)
        url = start(spec, host=host, port=port, address=ray_address, dashboard=dashboard)
    except (BundleError, ValueError, OSError) as exc:  # OSError: ConnectionError (no cluster there) too
        raise _fail(str(exc)) from exc
    typer.echo(f"serving at {url}  (console: {url}/ui/; OpenAPI: {url}/docs; Ctrl-C stops)")
    if DASHBOARD["url"]:
        typer.echo(f"Ray dashboard: {DASHBOARD['url']} (this machine only)")
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
        stop()


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="where data, bundles and runs are written")] = Path("runs/demo"),
) -> None:
    """Run the whole product end to end on the embedded default dataset (no download)."""
    from retrec.cli.demo import run_demo

    try:
        run_demo(workdir)
    except FileExistsError as exc:
        raise _fail(str(exc)) from exc
