"""The building blocks of fleetwatch's configuration models: durations, the strict section base, secret
files. Kept apart from ``fleetwatch.config`` so that the modules owning a section's model (alert rules)
can use them without importing the whole configuration."""

from __future__ import annotations

import re
import stat
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationInfo, field_validator

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


def _above_zero(duration: timedelta) -> timedelta:
    if duration <= timedelta(0):
        raise ValueError("expected a duration > 0")
    return duration


# An interval or a timeout: "0s" would mean a busy loop (an epoch or a health point per iteration) or an
# immediate failure.
PositiveDuration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_above_zero)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _typed_as_toml_types_them(cls, value: Any, info: ValidationInfo) -> Any:
        """A switch or a count written as text is a mistake, not a value: pydantic's lax mode took
        ``write_raw = "yes"`` and ``enabled = "false"`` (as true and false), and ``qos = "1"``."""
        if info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if annotation is bool and not isinstance(value, bool):
            raise ValueError(f"expected true or false (got {value!r})")
        if annotation is int and (isinstance(value, str | bool | float)):
            raise ValueError(f"expected an integer (got {value!r})")
        if annotation in _NUMBERS and _text_or_switch(value):
            raise ValueError(f"expected a number (got {value!r})")
        if annotation in _NUMBER_LISTS and isinstance(value, list) and any(_text_or_switch(v) for v in value):
            raise ValueError(f"expected numbers (got {value!r})")
        return value


# Number settings, where a number written as text ("30") or a switch (true) is a mistake as for a count. A
# threshold's pair of numbers is checked item by item.
_NUMBERS: tuple[Any, ...] = (float, float | None, float | tuple[float, float], float | tuple[float, float] | None)
_NUMBER_LISTS: tuple[Any, ...] = (list[float],)


def _text_or_switch(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(_text_or_switch(v) for v in value)
    return isinstance(value, str | bool)


def url_without_secrets(url: str) -> str:
    """What a message may say about a URL: scheme, host and port. A user and password may be in it, and the
    path, query or fragment of an incoming-webhook URL (Slack's, most any) is its secret.

    >>> url_without_secrets("https://user:pw@hooks.example.com:8443/services/T0/B0/XyZ?token=abc")
    'https://hooks.example.com:8443'
    >>> url_without_secrets("localhost:3000?token=abc"), url_without_secrets("http://admin:pa/ss@db:8086/x")
    ('localhost:3000', 'http://(host not shown)')
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    # The query and fragment are never shown; what is left is user info, host and path.
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    user_info, at, after = head.rpartition("@")
    # An "@" after a "/" is a password with a "/" in it, or an "@" in the path: which part is the host cannot be
    # told, and either reading could show a piece of a secret.
    host = "(host not shown)" if at and "/" in user_info else after.split("/", 1)[0]
    return f"{scheme}://{host}" if separator else host


def check_url_port(url: str) -> None:
    """Raise ValueError unless the URL has a host and, if it names one, a port from 1 to 65535."""
    try:
        parts = urlsplit(url)
        valid = bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a port past 65535, or not a number
        valid = False
    if not valid:
        raise ValueError(f"expected a host and a port from 1 to 65535 (got {url_without_secrets(url)!r})")


def is_special_file(path: Path) -> bool:
    """A FIFO, socket or device (not a regular file, a directory or a missing path, which opening reports)."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


# A password, token or API key is far shorter; a longer file is the wrong file (or /dev/zero).
_SECRET_FILE_MAX_BYTES = 64 * 1024


def read_secret_file(path: Path | None, key: str) -> SecretStr | None:
    if path is None:
        return None
    if is_special_file(path):
        # A FIFO would block the start until something writes to it; a device may never end.
        raise ValueError(f"{key}: cannot read secret file {path}: not a regular file")
    try:
        with path.open("rb") as f:
            data = f.read(_SECRET_FILE_MAX_BYTES + 1)
        if len(data) > _SECRET_FILE_MAX_BYTES:
            raise OverflowError
        return SecretStr(data.decode("utf-8").strip())
    except OverflowError:
        raise ValueError(f"{key}: secret file {path} is longer than {_SECRET_FILE_MAX_BYTES} bytes") from None
    except OSError as exc:
        raise ValueError(f"{key}: cannot read secret file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        # A path with a NUL byte, or a file that is not UTF-8 text.
        raise ValueError(f"{key}: cannot read secret file {path}: {type(exc).__name__}") from exc
