"""MQTT topics: filter matching here; topic templates (levels to tags) are ``fleetwatch.topic_template``, which
the configuration also uses to validate them when it is loaded.
"""

from __future__ import annotations

from fleetwatch.topic_template import TopicTemplate

__all__ = ["TopicTemplate", "topic_matches"]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest; ``$``-topics only match explicitly).

    Walks the topic by its separators without cutting it into levels: a topic may be 65,535 bytes, and a
    client may send many new ones.

    >>> topic_matches("sensors/+/temp", "sensors/d1/temp"), topic_matches("sensors/#", "sensors")
    (True, True)
    """
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False
    pos = 0  # start of the topic level to match; -1 once the topic has no level left
    for level in topic_filter.split("/"):
        if level == "#":
            return True  # also matches the parent level itself ("a/#" matches "a")
        if pos < 0:
            return False
        end = topic.find("/", pos)
        if level != "+":
            stop = len(topic) if end < 0 else end
            if stop - pos != len(level) or not topic.startswith(level, pos):
                return False
        pos = -1 if end < 0 else end + 1
    return pos < 0
