"""The building blocks of fleetwatch's configuration models: durations, the strict section base, secret
files. Kept apart from ``fleetwatch.config`` so that the modules owning a section's model (alert rules)
can use them without importing the whole configuration."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> timedelta:
    """Parse ``"10s"``, ``"1m30s"``, ``"250ms"``, ``"7d"`` or a number of seconds.

    >>> parse_duration("1m30s")
    datetime.timedelta(seconds=90)
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '10s', '1m' or '250ms'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("expected a duration >= 0")
        return _seconds(value, value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return _seconds(total, value)
    raise ValueError(f"expected a duration such as '10s', '1m' or '250ms' (got {value!r})")


def _seconds(seconds: float, given: Any) -> timedelta:
    """A timedelta, or the ValueError pydantic reports: timedelta stops at 999,999,999 days (and a NaN or
    infinity is no duration)."""
    try:
        return timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        raise ValueError(f"expected a finite duration under 999999999 days (got {given!r})") from None


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def url_without_secrets(url: str) -> str:
    """What a message may say about a URL: scheme, host and port. A user and password may be in it, and the
    path or query of an incoming-webhook URL (Slack's, most any) is its secret.

    >>> url_without_secrets("https://user:pw@hooks.example.com:8443/services/T0/B0/XyZ?token=abc")
    'https://hooks.example.com:8443'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparseable URL)"
    if not parts.scheme or not parts.netloc:
        # No scheme: urlsplit sees a path. The part before the first "/" is the host, less any user info.
        return url.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def read_secret_file(path: Path | None, key: str) -> SecretStr | None:
    if path is None:
        return None
    try:
        return SecretStr(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"{key}: cannot read secret file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        # A path with a NUL byte, or a file that is not UTF-8 text.
        raise ValueError(f"{key}: cannot read secret file {path}: {type(exc).__name__}") from exc
