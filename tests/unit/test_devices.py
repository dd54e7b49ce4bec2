"""The device inventory ([mqtt.devices], fleetwatch/devices.py): static tags per device on every reading, a
file read again when it changes, unknown devices counted and passed on or refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collectors.mqtt.parse import MessageBatch, MQTTParser
from fleetwatch import config
from fleetwatch.config import from_dict
from fleetwatch.devices import InventoryError, load_devices
from fleetwatch.record import parse_series

NOW = 1_767_225_600_000_000_000


def parser(devices: dict[str, object]) -> MQTTParser:
    cfg = from_dict(
        {
            "mqtt": {
                "subscriptions": [{"topic": "s/+/+/+", "template": "s/{site}/{device}/{metric}"}],
                "devices": devices,
            },
            "windows": {"max_age": "0s", "max_future_skew": "100000d"},
        },
        env={},
    )
    return MQTTParser(cfg.mqtt, cfg.windows)


def tags_of(parsed_series: list[str]) -> list[dict[str, str]]:
    return [parse_series(s)[1] for s in parsed_series]


def test_csv_and_toml_inventories(tmp_path: Path) -> None:
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("device,site_name,model,owner\nd1,Lyon,TH-2,facilities\nd2,,TH-3,\n\n")
    assert load_devices(csv_file) == {
        "d1": {"site_name": "Lyon", "model": "TH-2", "owner": "facilities"},
        "d2": {"model": "TH-3"},  # empty cells are no tag
    }
    toml_file = tmp_path / "devices.toml"
    toml_file.write_text('[d1]\nmodel = "TH-2"\nfloor = 3\n')
    assert load_devices(toml_file) == {"d1": {"model": "TH-2", "floor": "3"}}


@pytest.mark.parametrize(
    "text,problem",
    [
        ("device\nd1\n", "at least one tag column"),
        ("device,model\nd1,a,b\n", "3 cells where the header has 2"),
        ("device,model\nd1,a\nd1,b\n", "appears twice"),
        ("device,metric\nd1,x\n", "set by fleetwatch"),
        ("device,model,model\nd1,a,b\n", "appears twice in the header"),
    ],
)
def test_a_bad_inventory_is_refused_with_where_and_why(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "devices.csv"
    path.write_text(text)
    with pytest.raises(InventoryError, match=problem):
        load_devices(path)


def test_an_unreadable_inventory_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as err:
        parser({"file": str(tmp_path / "missing.csv")})
    assert "mqtt.devices" in str(err.value) and "cannot read" in str(err.value)


def test_known_devices_get_their_tags_and_unknown_ones_are_counted_and_passed_on(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text("device,model,site\nd1,TH-2,from-inventory\n")
    p = parser({"file": str(path)})
    parsed = p.parse(MessageBatch(NOW, [("s/lyon/d1/temp", b"21.5"), ("s/lyon/d9/temp", b"20.0")]))
    assert tags_of([r.series for r in parsed.readings]) == [
        # The topic's own tags win over the inventory's (the series keeps its name).
        {"device": "d1", "metric": "temp", "model": "TH-2", "site": "lyon"},
        {"device": "d9", "metric": "temp", "site": "lyon"},
    ]
    assert parsed.unknown_devices == 1 and parsed.dead_letters == []


def test_unknown_devices_can_be_refused_as_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text("device,model\nd1,TH-2\n")
    p = parser({"file": str(path), "missing": "reject"})
    parsed = p.parse(MessageBatch(NOW, [("s/lyon/d1/temp", b"21.5"), ("s/lyon/d9/temp", b"20.0")]))
    assert [r.value for r in parsed.readings] == [21.5]
    assert [(d.reason, d.source) for d in parsed.dead_letters] == [("unknown_device", "mqtt:s/lyon/d9/temp")]
    assert parsed.unknown_devices == 1


def test_a_changed_file_is_read_again_without_a_restart_and_a_broken_one_keeps_the_last(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text("device,model\nd1,TH-2\n")
    p = parser({"file": str(path), "reload_interval": "0s"})
    first = p.parse(MessageBatch(NOW, [("s/lyon/d1/temp", b"1"), ("s/lyon/d2/temp", b"2")]))
    assert [t.get("model") for t in tags_of([r.series for r in first.readings])] == ["TH-2", None]

    path.write_text("device,model\nd1,TH-2b\nd2,TH-9\n")
    os.utime(path, ns=(NOW + 1, NOW + 1))  # a new stamp even within the file system's time resolution
    second = p.parse(MessageBatch(NOW, [("s/lyon/d1/temp", b"1"), ("s/lyon/d2/temp", b"2")]))
    assert [t.get("model") for t in tags_of([r.series for r in second.readings])] == ["TH-2b", "TH-9"]
    assert second.unknown_devices == 0

    path.write_text("device,model\nd1\n")  # broken: the previous inventory stays
    os.utime(path, ns=(NOW + 2, NOW + 2))
    third = p.parse(MessageBatch(NOW, [("s/lyon/d2/temp", b"2")]))
    assert [t.get("model") for t in tags_of([r.series for r in third.readings])] == ["TH-9"]
    assert p.inventory_errors == 1
