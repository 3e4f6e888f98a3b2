"""The pilot node (daemon)."""


def __getattr__(name):
    # Lazy, so that pilotctl can read node.config without loading the stack.
    if name == "PilotNode":
        from .service import PilotNode

        return PilotNode
    raise AttributeError(name)


__all__ = ["PilotNode"]
