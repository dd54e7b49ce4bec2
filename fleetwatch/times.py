"""Wall-clock times as devices and log writers spell them, leap seconds included.

A leap second is written ``23:59:60`` (RFC 3339 allows it; NTP-synced syslog daemons and GPS receivers send
it). Python's ``datetime`` has no second 60, and the stores count time as POSIX does, without leap seconds:
second 60 is read as the first second of the next minute, as POSIX ``mktime`` and Go's ``time.Date`` do.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, tzinfo

# The seconds of an ISO 8601 time: hh:mm:60, not followed by another digit.
_LEAP_SECOND = re.compile(r"(?<=\d\d:\d\d:)60(?!\d)")


def from_iso(text: str) -> datetime:
    """``datetime.fromisoformat``, but second 60 is the first second of the next minute, and a lower-case "t" or
    "z" is read as RFC 3339 allows. Raises ValueError."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        if text != text.upper():
            # RFC 3339 (section 5.6) allows a lower-case "t" and "z", which fromisoformat refuses.
            return from_iso(text.upper())
        leap = _LEAP_SECOND.search(text)
        if leap is None:
            raise
        return _next_second(datetime.fromisoformat(text[: leap.start()] + "59" + text[leap.end() :]))


def wall_time(
    year: int, month: int, day: int, hour: int, minute: int, second: int, microsecond: int, tz: tzinfo
) -> datetime:
    """``datetime(...)``, but second 60 is the first second of the next minute. Raises ValueError."""
    leap = second == 60
    moment = datetime(year, month, day, hour, minute, 59 if leap else second, microsecond, tzinfo=tz)
    return _next_second(moment) if leap else moment


def _next_second(moment: datetime) -> datetime:
    try:
        return moment + timedelta(seconds=1)
    except OverflowError:  # 9999-12-31T23:59:60: past datetime's range, a bad time like any other
        raise ValueError(f"{moment.isoformat()} plus a leap second is beyond year 9999") from None
