"""A real ``redis-server`` (Debian's package; ``.ci/run`` installs it) started per test session on a free port, with
append-only persistence fsynced on every write, in a temporary folder; stopped at the end."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from retrec.events.local_redis import LocalRedis, free_port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed: .ci/run installs Debian's redis-server package")
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    server = LocalRedis(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    yield server
    server.kill()
