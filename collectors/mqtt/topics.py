"""MQTT topics: filter matching here; topic templates (levels to tags) are ``fleetwatch.topic_template``, which
the configuration also uses to validate them when it is loaded.
"""

from __future__ import annotations

from fleetwatch.topic_template import TopicTemplate

__all__ = ["TopicTemplate", "topic_matches"]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest; ``$``-topics only match explicitly)."""
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False
    filt = topic_filter.split("/")
    parts = topic.split("/")
    for i, level in enumerate(filt):
        if level == "#":
            return True
        if i >= len(parts) or (level != "+" and level != parts[i]):
            return False
    return len(parts) == len(filt)
