"""The device inventory: static tags per device (site, model, owner, location, ...) that every reading of the
device gets, from a file the fleet's owners keep (``[mqtt.devices]``).

Two formats, by the file's suffix:

- CSV, with a header row: the first column is the device id, every other column a tag::

      device,site,model,owner
      dev00001,lyon,TH-2,facilities

- TOML: a table per device::

      [dev00001]
      site = "lyon"
      model = "TH-2"

Empty cells are left out (the device simply has no such tag). The file is read at start (a file that cannot
be read is a configuration error) and read again when it changes (``collectors.mqtt.parse``).
"""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

Inventory = dict[str, dict[str, str]]

# Names the pipeline sets itself: a column by one of these names would silently rename series.
RESERVED_TAGS = frozenset({"metric", "window"})


class InventoryError(ValueError):
    pass


def load_devices(path: Path) -> Inventory:
    """The inventory in ``path``, or ``InventoryError`` saying what is wrong with the file (and where)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read {path}: {exc}") from None
    inventory = _from_toml(text, path) if path.suffix.lower() == ".toml" else _from_csv(text, path)
    for device, tags in inventory.items():
        clash = RESERVED_TAGS & tags.keys()
        if clash:
            raise InventoryError(f"{path}: device {device!r}: {sorted(clash)} are set by fleetwatch, not the inventory")
    return inventory


def _from_csv(text: str, path: Path) -> Inventory:
    rows = list(csv.reader(text.splitlines()))
    if not rows or len(rows[0]) < 2 or not all(name.strip() for name in rows[0]):
        raise InventoryError(f"{path}: the first row must name the device column and at least one tag column")
    header = [name.strip() for name in rows[0]]
    if len(set(header)) != len(header):
        raise InventoryError(f"{path}: a column name appears twice in the header {header}")
    inventory: Inventory = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InventoryError(f"{path}:{line}: {len(row)} cells where the header has {len(header)}")
        device = row[0].strip()
        if not device:
            raise InventoryError(f"{path}:{line}: no device id in the first column")
        if device in inventory:
            raise InventoryError(f"{path}:{line}: device {device!r} appears twice")
        inventory[device] = {name: cell.strip() for name, cell in zip(header[1:], row[1:], strict=True) if cell.strip()}
    return inventory


def _from_toml(text: str, path: Path) -> Inventory:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: {exc}") from None
    inventory: Inventory = {}
    for device, tags in doc.items():
        if not isinstance(tags, dict) or not all(isinstance(v, str | int | float | bool) for v in tags.values()):
            raise InventoryError(f"{path}: [{device}] must be a table of tag = value")
        inventory[device] = {name: str(value) for name, value in tags.items() if str(value) != ""}
    return inventory
