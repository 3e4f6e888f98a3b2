"""
What a published MCP stdio server is, as saved in ``config.json`` and asked
for on the control socket: checked values, one place for every check.

No Twisted here: ``pilotctl`` and :mod:`pilotproto.node.config` use these too.

An **MCP server** ``{"port", "argv", "cwd", "allow"}``: virtual port ``port``
(default :data:`MCP_PORT`) whose every incoming stream gets its own process
``argv`` (no shell), started in ``cwd`` (an absolute directory: where
``pilotctl mcp serve`` ran, unless ``--cwd`` says otherwise), with its
stdin/stdout bridged to the stream; ``allow`` is a list of peer addresses
(empty: every trusted peer), as for an expose.
"""

from __future__ import annotations

import os

import attrs

from ..common.names import check_port
from ..errors import InvalidArgument
from .bridge_specs import MAX_ALLOW, check_address

#: "the MCP port": where ``pilotctl mcp serve`` listens and ``mcp connect`` dials by default
MCP_PORT = 1003
#: the most arguments, and bytes in all, one command line may have
MAX_ARGS = 256
MAX_ARGV_BYTES = 64 * 1024


def check_argv(argv) -> tuple:
    """A command and its arguments: a non-empty list of strings without NUL bytes."""
    if not isinstance(argv, (list, tuple)) or not argv or len(argv) > MAX_ARGS:
        raise InvalidArgument(f"the command must be a list of 1 to {MAX_ARGS} strings",
                              hint="For example: pilotctl mcp serve -- python server.py")
    if not all(isinstance(a, str) and "\0" not in a for a in argv) or not argv[0]:
        raise InvalidArgument("every word of the command must be text without NUL bytes, the first not empty")
    if sum(len(a.encode("utf-8", "surrogateescape")) for a in argv) > MAX_ARGV_BYTES:
        raise InvalidArgument(f"the command line is longer than {MAX_ARGV_BYTES} bytes")
    return tuple(argv)


def check_cwd(cwd) -> str:
    if not isinstance(cwd, str) or not os.path.isabs(cwd) or "\0" in cwd:
        raise InvalidArgument(f"the working directory must be an absolute path, not {cwd!r}",
                              hint="The CLI sends the directory it runs in; give --cwd /some/dir to choose another.")
    return os.path.normpath(cwd)


@attrs.frozen
class McpServerSpec:
    port: int
    argv: tuple
    cwd: str
    allow: tuple = ()

    @classmethod
    def checked(cls, port, argv, cwd, allow=()) -> McpServerSpec:
        if allow is None:
            allow = ()
        if not isinstance(allow, (list, tuple)) or len(allow) > MAX_ALLOW:
            raise InvalidArgument(f"allow must be a list of at most {MAX_ALLOW} peer addresses")
        addresses = tuple(sorted({check_address(a) for a in allow}))
        return cls(check_port(port), check_argv(argv), check_cwd(cwd), addresses)

    @classmethod
    def from_dict(cls, doc) -> McpServerSpec:
        if not isinstance(doc, dict) or not {"port", "argv", "cwd"} <= set(doc) <= {"port", "argv", "cwd", "allow"}:
            raise InvalidArgument(f"a saved MCP server must have port, argv, cwd (and allow): {doc!r}")
        return cls.checked(doc["port"], doc["argv"], doc["cwd"], doc.get("allow") or ())

    def to_dict(self) -> dict:
        return {"port": self.port, "argv": list(self.argv), "cwd": self.cwd, "allow": list(self.allow)}

    @property
    def command_text(self) -> str:
        return " ".join(self.argv)


def load_mcp_servers(docs) -> list[dict]:
    """Saved MCP servers, checked and in canonical form (config.json's ``mcp_servers``)."""
    if not isinstance(docs, (list, tuple)):
        raise InvalidArgument("mcp_servers must be a list")
    specs = [McpServerSpec.from_dict(d) for d in docs]
    if len({s.port for s in specs}) != len(specs):
        raise InvalidArgument("two saved MCP servers use the same virtual port")
    return [s.to_dict() for s in specs]
