"""
Event topics and subscription patterns (port 1002).

A topic is 1-200 characters of ``[A-Za-z0-9_.-]``, dot-separated (no empty
part: ``news..x`` and ``.news`` are refused).  A pattern is the same, plus
``*``, which matches any run of characters, dots included: ``news.*``
matches ``news.a`` and ``news.a.b``; ``*`` matches every topic.  Patterns
compile to anchored regular expressions once, so matching an event against
every subscription is cheap.
"""

from __future__ import annotations

import functools
import re

from ..errors import InvalidArgument

MAX_TOPIC = 200
_TOPIC = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_PATTERN = re.compile(r"^[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*$")


def check_topic(topic) -> str:
    """``topic`` if it is a valid topic, else InvalidArgument saying why."""
    if not isinstance(topic, str) or not 1 <= len(topic) <= MAX_TOPIC or not _TOPIC.match(topic):
        raise InvalidArgument(
            f"{topic!r} is not a topic",
            hint=f"A topic is 1-{MAX_TOPIC} characters of letters, digits, '_', '-', in dot-separated parts, e.g. news.sports.",
        )
    return topic


def check_pattern(pattern) -> str:
    """``pattern`` if it is a valid subscription pattern, else InvalidArgument saying why."""
    if not isinstance(pattern, str) or not 1 <= len(pattern) <= MAX_TOPIC or not _PATTERN.match(pattern):
        raise InvalidArgument(
            f"{pattern!r} is not a topic pattern",
            hint="A pattern is a topic in which '*' matches any run of characters: news.*, *.errors, *.",
        )
    return pattern


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str):
    return re.compile("".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern)), re.S)


def matches(pattern: str, topic: str) -> bool:
    """Does ``pattern`` match ``topic``?  (Both already checked.)"""
    return _compiled(pattern).fullmatch(topic) is not None


def any_matches(patterns, topic: str) -> bool:
    return any(matches(p, topic) for p in patterns)
