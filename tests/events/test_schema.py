"""retrec.events.schema: a batch is taken whole or refused with the first bad event named, never echoing input."""

from __future__ import annotations

import pytest

from retrec.events.schema import MAX_BATCH, Event, EventError, parse_events

NOW = 1_765_000_000.0


def _row(**change: object) -> dict[str, object]:
    return {"user": "u1", "item": "i9", "timestamp": NOW - 5, "type": "purchase", **change}


def test_a_good_batch_round_trips_through_json() -> None:
    events = parse_events([_row(), _row(user="u2", timestamp=int(NOW))], now=NOW)
    assert events == [Event("u1", "i9", NOW - 5, "purchase"), Event("u2", "i9", NOW, "purchase")]
    assert Event.from_json(events[0].to_json()) == events[0]
    assert parse_events([{"user": "u", "item": "i", "timestamp": 1}], now=NOW, default_type="view")[0].type == "view"


@pytest.mark.parametrize(("rows", "message"), [
    ([_row(user=7)], "event 0: user must be a string, got int"),
    ([_row(), _row(item="")], "event 1: item must be 1-256 characters"),
    ([_row(item="x" * 257)], "item must be 1-256 characters, got 257"),
    ([_row(user="a\nb")], "must not contain control characters"),
    ([_row(item="x\ud800")], "must be valid Unicode"),
    ([_row(timestamp="2026-01-01")], "timestamp must be a number"),
    ([_row(timestamp=True)], "timestamp must be a number"),
    ([_row(timestamp=float("nan"))], "finite, non-negative"),
    ([_row(timestamp=-1)], "finite, non-negative"),
    ([_row(timestamp=NOW * 1000)], "ahead of the server's clock"),
    ([_row(type="Purchase")], "type must be a lowercase name"),
    ([{"user": "u", "item": "i", "timestamp": NOW}], "missing field(s) type"),
    ([_row(usr="u")], "unknown field(s) 'usr'"),
    (["not an object"], "must be an object"),
    ([], "no events"),
    ({"user": "u"}, "events must be a list"),
    ([_row()] * (MAX_BATCH + 1), f"at most {MAX_BATCH}"),
])
def test_bad_batches_are_refused_whole_with_the_first_bad_event_named(rows: object, message: str) -> None:
    with pytest.raises(EventError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_events(rows, now=NOW)  # type: ignore[arg-type]


def test_errors_never_echo_what_the_client_sent() -> None:
    secret = "<script>alert(1)</script>"
    for row in (_row(user=secret * 20), _row(**{secret: 1}), _row(type=secret), _row(timestamp=secret)):
        with pytest.raises(EventError) as caught:
            parse_events([row], now=NOW)
        assert "script" not in str(caught.value)
