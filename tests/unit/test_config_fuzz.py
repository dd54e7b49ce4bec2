"""fleetwatch/config: properties of the loader over generated files (hypothesis).

- Any bytes as a config file: ``load`` returns a Config or raises ConfigError, nothing else.
- The commented example, parsed and then changed at random places (a value replaced by any TOML value, a key
  removed, an unknown key added), written back as TOML: ``load`` returns a Config or raises ConfigError whose
  every problem names the key (``section.key: what was expected``).

FLEETWATCH_FUZZ_EXAMPLES sets the number of examples of each property (a few hundred by default).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import tomllib
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from fleetwatch.config import Config, ConfigError, load
from tests.unit.fuzzing import FUZZ

EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "fleetwatch.example.toml"
EXAMPLE = tomllib.loads(EXAMPLE_FILE.read_text(encoding="utf-8"))
# "mqtt.port: ...", "logs.files[0].parser: ...", 'mqtt."a b": ...', "(top level): ...", "alerts: rule 'x': ...".
_SEGMENT = r'(?:[\w-]+|"(?:[^"\\]|\\.)*")'
NAMES_A_KEY = re.compile(rf"(\(top level\)|{_SEGMENT}(\.{_SEGMENT}|\[\d+\])*): \S")


def load_text(content: bytes) -> Config | ConfigError:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleetwatch.toml"
        path.write_bytes(content)
        try:
            return load(path, env={})
        except ConfigError as err:
            assert err.problems
            return err


# -------------------------------------------------------------------------------------- TOML writing


def toml_string(text: str) -> str:
    # JSON's escapes are TOML's, but TOML wants DEL escaped and has no surrogates (none are generated).
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: dict[str, Any]) -> str:
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in doc.items())


def test_the_toml_writer_round_trips_the_example() -> None:
    assert tomllib.loads(toml_document(EXAMPLE)) == EXAMPLE


# -------------------------------------------------------------------------------------- mutations

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
STRINGS = st.one_of(
    TEXT,
    st.sampled_from(
        [
            "",
            "0s",
            "-1s",
            "1e400s",
            "10x",
            "99999999999999999999d",
            "127.0.0.1:99999",
            ":1",
            "[::1]:0",
            "(?P<",
            "(?P<level>",
            "(?P<a>x)(?P<a>y)",
            "Europe/Nowhere",
            "../../etc/passwd",
            "/",
            ".",
            "/nonexistent/file",
            "sensors/{a}/{a}",
            "sensors/#/x",
            "a/+b",
            "$share/g/x",
            "\x00",
            "%Q",
            "v2",
            "http://",
            "ftp://x",
        ]
    ),
)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 1, 3, 65_535, 65_536, 2**31]),
    st.floats(),
    STRINGS,
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.dates(),
    st.times(),
)
TOML_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the parsed example: keys of tables and items of arrays."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        out.append((*prefix, key))
        out += paths(child, (*prefix, key))
    return out


EXAMPLE_PATHS = paths(EXAMPLE)


def copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy(v) for v in value]
    return value


@st.composite
def mutated_examples(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = copy(EXAMPLE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(EXAMPLE_PATHS))
        parent: Any = doc
        for key in path[:-1]:
            # A place an earlier change replaced or removed is not there any more.
            if not (isinstance(parent, dict) and key in parent) and not (
                isinstance(parent, list) and isinstance(key, int) and key < len(parent)
            ):
                break
            parent = parent[key]
        else:
            last = path[-1]
            if isinstance(parent, list) and not isinstance(last, int):
                continue
            action = draw(st.sampled_from(["replace", "replace", "delete", "unknown"]))
            if isinstance(parent, dict) and action == "unknown":
                parent[draw(TEXT)] = draw(TOML_VALUES)
            elif isinstance(parent, dict) and action == "delete":
                parent.pop(last, None)
            elif isinstance(parent, dict) or (isinstance(parent, list) and 0 <= last < len(parent)):
                parent[last] = draw(TOML_VALUES)
    return doc


@FUZZ
@given(content=st.binary(max_size=200) | TEXT.map(str.encode))
@example(content=b"\xff")
@example(content=b"[mqtt]\nport = 1\n\xe9")
def test_any_bytes_as_a_config_file_load_or_raise_config_error(content: bytes) -> None:
    load_text(content)


@FUZZ
@given(doc=mutated_examples())
@example(doc={"logs": {"files": [{"name": "a", "paths": ["/x"], "parser": {"kind": "regex", "pattern": "(?P<"}}]}})
@example(doc={"mqtt": {"password_file": "/"}})
@example(doc={"logs": {"syslog": [{"name": "s", "listen": "[::1]:99999"}]}})
def test_a_changed_example_loads_or_every_problem_names_its_key(doc: dict[str, Any]) -> None:
    outcome = load_text(toml_document(doc).encode())
    if isinstance(outcome, ConfigError):
        for problem in outcome.problems:
            assert NAMES_A_KEY.match(problem), f"a problem that names no key: {problem!r}"
