"""``twistd pilot``: options checked as usage errors, the node built with its control socket."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from twisted.python import usage

from pilotproto import tap
from pilotproto.control.service import ControlService
from pilotproto.node.service import PilotNode

from helpers import UDPMemoryReactor


def _options(*argv):
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_node_without_a_hostname_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError, match="--hostname"):
        _options("node", "--home", str(tmp_path / "a"), "--beacon", "127.0.0.1:9000")


def test_node_without_a_beacon_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError, match="--beacon"):
        _options("node", "--home", str(tmp_path / "a"), "--hostname", "agent-a")


def test_a_saved_config_supplies_what_the_command_line_leaves_out(tmp_path):
    from pilotproto.node.config import NodeConfig

    from pilotproto.identity import load_or_create

    home = str(tmp_path / "a")
    load_or_create(home)  # a node that ran here before (issue 9: config without a key is identity_missing)
    NodeConfig(hostname="agent-a", beacon="127.0.0.1:9000").save(home)
    _options("node", "--home", home)


def test_make_service_builds_a_node_with_its_control_socket(tmp_path):
    options = _options("node", "--home", str(tmp_path / "a"), "--hostname", "agent-a", "--beacon", "127.0.0.1:9000")
    node = tap.makeService(options, reactor=UDPMemoryReactor())
    assert isinstance(node, PilotNode)
    assert [type(child).__name__ for child in node][-1] == ControlService.__name__


def test_twistd_pilot_node_without_hostname_exits_non_zero_without_a_traceback(tmp_path):
    from pilotproto.cli.daemon import child_environment

    env = dict(child_environment(), PILOT_HOME=str(tmp_path / "none"))
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
         "-n", "--pidfile=", "pilot", "node", "--beacon", "127.0.0.1:9000"],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "--hostname" in output
    assert "Traceback" not in output
