"""The pilot node (daemon)."""

from .service import PilotNode

__all__ = ["PilotNode"]
