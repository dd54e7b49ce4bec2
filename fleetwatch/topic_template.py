"""Topic templates: MQTT topic levels to tags, in the manner of Telegraf's ``topic_parsing``.

A template has one element per topic level:

- ``{name}`` turns the level into the tag ``name`` (``{metric}`` names the reading's metric);
- ``+`` skips the level;
- a literal must equal the level;
- ``#``, last, skips all remaining levels (zero or more).

>>> TopicTemplate.parse("sensors/{site}/{device}/{metric}").tags("sensors/s1/d7/temperature")
{'site': 's1', 'device': 'd7', 'metric': 'temperature'}
>>> TopicTemplate.parse("tele/{device}/#").tags("tele/plug1/SENSOR")
{'device': 'plug1'}

Here, on the ground floor, because the configuration validates ``mqtt.subscriptions[].template`` when it is
loaded and must not import ``collectors`` to do it; the MQTT parser uses this same class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_.-]*)\}$")

# One template level: ("tag", name) | ("skip", "") | ("literal", text)
Level = tuple[str, str]


# Tag names the stores keep for themselves.
_STORE_RESERVED = frozenset({"time", "_field", "_measurement"})


@dataclass(frozen=True)
class TopicTemplate:
    levels: tuple[Level, ...]
    open_ended: bool  # ends in "#"

    @classmethod
    def parse(cls, template: str) -> TopicTemplate:
        raw = template.split("/")
        open_ended = raw[-1] == "#"
        if open_ended:
            raw = raw[:-1]
        levels: list[Level] = []
        seen: set[str] = set()
        for text in raw:
            if text == "#":
                raise ValueError(f"'#' may only be the last level of template {template!r}")
            if text == "+":
                levels.append(("skip", ""))
                continue
            match = _NAME.match(text)
            if match:
                name = match.group(1)
                if name in seen:
                    raise ValueError(f"tag {{{name}}} appears twice in template {template!r}")
                if name == "window":
                    # Aggregates carry a window tag of their own (10s, 1m): InfluxDB refuses a second one.
                    raise ValueError(
                        f"tag {{window}} in template {template!r} is fleetwatch's own tag; name it otherwise"
                    )
                if name in _STORE_RESERVED:
                    # InfluxDB refuses a tag key "time" in every point, and 2.x reads _field and _measurement as
                    # its own columns.
                    raise ValueError(f"tag {{{name}}} in template {template!r} is a name InfluxDB reserves")
                seen.add(name)
                levels.append(("tag", name))
            elif "{" in text or "}" in text or "+" in text:
                raise ValueError(f"level {text!r} of template {template!r} is neither {{name}}, + nor literal")
            else:
                levels.append(("literal", text))
        return cls(tuple(levels), open_ended)

    def tags(self, topic: str) -> dict[str, str] | None:
        """Tags of a topic, or None when the topic does not fit the template."""
        parts = topic.split("/")
        if len(parts) < len(self.levels) or (len(parts) > len(self.levels) and not self.open_ended):
            return None
        tags: dict[str, str] = {}
        for (kind, name), part in zip(self.levels, parts, strict=False):
            if kind == "tag":
                tags[name] = part
            elif kind == "literal" and part != name:
                return None
        return tags
