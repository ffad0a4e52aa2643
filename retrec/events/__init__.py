"""Events in: user actions checked (:mod:`~retrec.events.schema`) and kept in an event log with offsets
(:mod:`~retrec.events.log`): the embedded segment files (:mod:`~retrec.events.segments`) or Redis Streams
(:mod:`~retrec.events.redis_log`). What learns online reads it; what serves appends to it."""

from retrec.events.log import EventLog, open_log
from retrec.events.offsets import LogUnavailableError, OffsetError
from retrec.events.schema import Event, EventError, parse_events

__all__ = ["Event", "EventError", "EventLog", "LogUnavailableError", "OffsetError", "open_log", "parse_events"]
