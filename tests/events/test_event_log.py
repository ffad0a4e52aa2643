"""retrec.events: one contract for both backends (embedded segments and a real Redis), then each one's crash story."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from retrec.events import Event, LogUnavailableError, OffsetError, open_log
from retrec.events.segments import HEADER, SegmentLog

pytest.importorskip("redis")


def _events(n: int, start: int = 0) -> list[Event]:
    return [Event(f"u{(start + i) % 7}", f"i{start + i}", 1_700_000_000.0 + start + i, "view") for i in range(n)]


@pytest.fixture(params=["segments", "redis"])
def event_log(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "segments":
        return open_log(tmp_path / "log", segment_bytes=4096)  # small segments: reads cross their boundaries
    server = request.getfixturevalue("redis_server")
    return open_log(f"{server.url}?key=test:{uuid.uuid4().hex}")


def test_offsets_are_contiguous_and_reads_return_what_was_appended(event_log) -> None:
    assert (event_log.end(), event_log.read(0, 10)) == (0, [])
    assert event_log.append(_events(3)) == (0, 3)
    assert event_log.append(_events(200, 3)) == (3, 200)
    assert event_log.append([]) == (203, 0)
    got = event_log.read(0, 1000)
    assert [o for o, _ in got] == list(range(203)) and [e for _, e in got] == _events(203)
    assert [o for o, _ in event_log.read(150, 20)] == list(range(150, 170))
    assert event_log.read(203, 5) == [] and event_log.end() == 203
    with pytest.raises(OffsetError, match="beyond the log's end"):
        event_log.read(204, 5)
    with pytest.raises(OffsetError, match="non-negative"):
        event_log.read(-1, 5)


def test_commits_move_forward_durably_and_name_their_limits(event_log) -> None:
    event_log.append(_events(10))
    assert event_log.committed("trainer") == 0
    event_log.commit("trainer", 4)
    event_log.commit("trainer", 10)
    assert event_log.committed("trainer") == 10 and event_log.committed("other") == 0
    with pytest.raises(OffsetError, match="behind the committed 10"):
        event_log.commit("trainer", 3)
    event_log.commit("trainer", 3, rewind=True)
    assert event_log.committed("trainer") == 3
    with pytest.raises(OffsetError, match="beyond the log's end"):
        event_log.commit("trainer", 11)
    for bad in ("../escape", "", "a" * 65, "a/b"):
        with pytest.raises(ValueError, match="consumer name"):
            event_log.commit(bad, 1)
    assert event_log.describe()["consumers"] == {"trainer": 3}


def test_retention_drops_old_events_and_says_where_the_log_starts(event_log) -> None:
    for i in range(0, 300, 50):
        event_log.append(_events(50, i))
    removed = event_log.retain(120)
    assert 0 < removed <= 120 and event_log.start() == removed
    with pytest.raises(OffsetError, match=f"removed by retention \\(the log starts at {removed}\\)"):
        event_log.read(0, 5)
    assert [o for o, _ in event_log.read(removed, 400)] == list(range(removed, 300))


def test_concurrent_writers_get_distinct_contiguous_offsets(event_log) -> None:
    def write(t: int) -> None:
        for j in range(10):
            event_log.append(_events(5, 1000 * t + 10 * j))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = event_log.read(0, 1000)
    assert [o for o, _ in got] == list(range(200))
    assert sorted(e.item for _, e in got) == sorted(e.item for t in range(4) for j in range(10)
                                                   for e in _events(5, 1000 * t + 10 * j))


def test_a_reader_at_the_end_while_a_writer_appends_reads_each_event_once(event_log) -> None:
    """A reader tailing the log (as the trainer does) never mistakes events appended during its read for a gap."""
    done = threading.Event()

    def write() -> None:
        for j in range(400):
            event_log.append(_events(1, j))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    got: list[int] = []
    while not done.is_set() or len(got) < 400:
        got += [o for o, _ in event_log.read(len(got), 50)]
    writer.join()
    assert got == list(range(400))


def test_segments_from_several_processes_and_a_torn_tail(tmp_path: Path) -> None:
    """Writers in other processes share the folder (a lock); a writer that died mid-append left half a record:
    readers stop before it, the next append truncates it, nothing acknowledged is lost."""
    folder = tmp_path / "log"
    script = ("import sys; from pathlib import Path; from retrec.events import Event, open_log; "
              "log = open_log(Path(sys.argv[1])); "
              "[log.append([Event('u', f'p{sys.argv[2]}-{i}', 1.0, 'view')] * 3) for i in range(20)]")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(folder), str(p)], env={**os.environ})
             for p in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    log = SegmentLog(folder)
    assert log.end() == 180 and len(log.read(0, 500)) == 180

    last = sorted(folder.glob("*.seg"))[-1]
    with open(last, "ab") as fh:  # a record header promising 500 bytes, and only 10 of them
        fh.write(HEADER.pack(500, 0) + b"x" * 10)
    fresh = SegmentLog(folder)
    assert fresh.end() == 180 and len(fresh.read(170, 50)) == 10
    assert fresh.append(_events(2)) == (180, 2)
    assert [e for _, e in SegmentLog(folder).read(180, 5)] == _events(2)
    assert log.end() == 182  # the first reader's cache follows the truncation


def test_redis_restarted_after_a_kill_keeps_every_acknowledged_event(redis_server) -> None:
    key = f"test:{uuid.uuid4().hex}"
    log = open_log(f"{redis_server.url}?key={key}")
    assert log.describe()["durability"] == "appendfsync always"
    for i in range(0, 500, 25):
        log.append(_events(25, i))
    log.commit("trainer", 400)
    redis_server.kill()
    for call in (lambda: log.append(_events(1, 500)), lambda: log.read(0, 10), lambda: log.commit("trainer", 450)):
        with pytest.raises(LogUnavailableError, match="event log at redis://") as away:  # a retryable error, no secret
            call()
        assert "password" not in str(away.value)
    redis_server.start()
    again = open_log(f"{redis_server.url}?key={key}")
    assert [e for _, e in again.read(0, 1000)] == _events(500)
    assert again.committed("trainer") == 400 and again.append(_events(1, 500)) == (500, 1)
    assert log.read(500, 10) == [(500, _events(1, 500)[0])]  # the first client reconnects by itself


def test_events_cli_appends_whole_files_and_names_the_bad_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from retrec.cli import app

    runner = CliRunner()
    good = tmp_path / "good.jsonl"
    good.write_text('{"user": "u1", "item": "i1", "timestamp": 1700000000}\n\n'
                    '{"user": "u2", "item": "i2", "timestamp": 1700000001, "type": "cart"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user": "u3", "item": "i3", "timestamp": 1700000002, "type": "view"}\n'
                   '{"user": "u3", "item": 4, "timestamp": 1700000003, "type": "view"}\n')
    log = str(tmp_path / "log")
    result = runner.invoke(app, ["events", "append", "--log", log, "--default-type", "view", str(good)])
    assert result.exit_code == 0 and "2 events appended, the first at offset 0" in result.output
    result = runner.invoke(app, ["events", "append", "--log", log, str(bad)])
    assert result.exit_code == 2 and f"{bad}:2: item must be a string" in result.output
    shown = runner.invoke(app, ["events", "read", "--log", log, "--from", "1"])
    assert shown.exit_code == 0 and [json.loads(x)["offset"] for x in shown.output.splitlines()] == [1]
    assert json.loads(runner.invoke(app, ["events", "show", "--log", log]).output)["end"] == 2
