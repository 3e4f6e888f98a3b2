"""
Checking collaborators when they are wired, as magic-wormhole's boss does.

``attrs`` dropped its ``provides`` validator (zope.interface is no longer
its business), so this is ours: a mis-wired collaborator (a swapped
argument, a bound method where an object was meant) fails at wiring time
with a message naming the attribute and the interface, instead of
silently at the first packet.
"""

from __future__ import annotations


def check_provides(obj, interface, name: str = "collaborator"):
    """Return ``obj`` if it provides ``interface``; TypeError otherwise."""
    if not interface.providedBy(obj):
        raise TypeError(f"{name} must provide {interface.__name__}, not {obj!r}")
    return obj


def provides(interface):
    """An attrs validator: the attribute's value provides ``interface``."""

    def validate(instance, attribute, value):
        check_provides(value, interface, f"{type(instance).__name__}.{attribute.name}")

    validate.__name__ = f"provides_{interface.__name__}"
    return validate
