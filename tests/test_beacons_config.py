"""
Several beacons in the settings (issue 14): ``--beacon`` repeated for
``twistd pilot node`` and ``pilotctl daemon start`` / ``init``, a list in
config.json (one string still reads as before), the TLS settings paired
with the beacons by position, and the node made with one link per beacon.
"""

from __future__ import annotations

import json
import os

import pytest
from helpers import UDPMemoryReactor
from twisted.python import usage

from pilotproto import tap
from pilotproto.cli import daemon as daemon_control
from pilotproto.cli.main import build_parser
from pilotproto.cli.status_commands import beacon_lines
from pilotproto.errors import InvalidArgument, StateError
from pilotproto.node.config import NodeConfig
from pilotproto.node.service import PilotNode

PIN = "ab" * 32


def test_one_beacon_saves_and_reads_as_before(tmp_path):
    NodeConfig(hostname="agent-a", beacon="127.0.0.1:9000", beacon_tls="127.0.0.1:4443").save(str(tmp_path))
    doc = json.load(open(tmp_path / "config.json"))
    assert doc["beacon"] == "127.0.0.1:9000" and doc["beacon_tls"] == "127.0.0.1:4443"
    config = NodeConfig.load(str(tmp_path))
    assert config.beacons == ["127.0.0.1:9000"] and config.beacon == "127.0.0.1:9000"
    assert config.beacon_tls_hostport(0) == ("127.0.0.1", 4443)


def test_several_beacons_are_a_list_in_the_config(tmp_path):
    config = NodeConfig(hostname="agent-a", beacon=["127.0.0.1:9000", "127.0.0.2:9000"], beacon_fingerprint=[PIN, PIN])
    config.save(str(tmp_path))
    doc = json.load(open(tmp_path / "config.json"))
    assert doc["beacon"] == ["127.0.0.1:9000", "127.0.0.2:9000"] and doc["beacon_fingerprint"] == [PIN, PIN]
    assert NodeConfig.load(str(tmp_path)) == config
    # Without its own --beacon-tls, each beacon's relay is its host on 443.
    assert config.beacon_tls_hostport(1) == ("127.0.0.2", 443)
    assert config.beacon_fingerprint_of(1) == PIN


def test_a_beacon_given_twice_or_more_pins_than_beacons_are_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="twice"):
        NodeConfig(beacon=["127.0.0.1:9000", "127.0.0.1:9000"]).validate()
    with pytest.raises(InvalidArgument, match="2 --beacon-tls for 1 --beacon"):
        NodeConfig(beacon=["127.0.0.1:9000"], beacon_tls=["a:1", "b:2"]).validate()
    (tmp_path / "config.json").write_text(json.dumps({"beacon": ["127.0.0.1:9000", "127.0.0.1:9000"]}))
    with pytest.raises(StateError):
        NodeConfig.load(str(tmp_path))


def test_new_beacons_replace_the_saved_ones_with_their_tls_settings():
    saved = NodeConfig(hostname="a", beacon="10.0.0.1:9000", beacon_tls="10.0.0.1:4443")
    assert saved.merged(beacon=None).beacon_tls == ["10.0.0.1:4443"]
    moved = saved.merged(beacon=["10.0.0.2:9000", "10.0.0.3:9000"])
    assert moved.beacons == ["10.0.0.2:9000", "10.0.0.3:9000"] and moved.beacon_tls == []


def test_twistd_pilot_node_takes_beacon_again_and_again(tmp_path):
    options = tap.Options()
    options.parseOptions([
        "node", "--home", str(tmp_path / "a"), "--hostname", "agent-a",
        "--beacon", "127.0.0.1:9000", "-b", "127.0.0.2:9000", "--beacon-fingerprint", PIN,
    ])
    assert options.subOptions["beacon"] == ["127.0.0.1:9000", "127.0.0.2:9000"]
    node = tap.makeService(options, reactor=UDPMemoryReactor())
    assert [link.where for link in node.link.links] == ["127.0.0.1:9000", "127.0.0.2:9000"]
    assert node.config.beacon_fingerprint == [PIN]
    with pytest.raises(usage.UsageError, match="--beacon"):
        tap.Options().parseOptions(["node", "--home", str(tmp_path / "b"), "--hostname", "agent-b"])


def test_the_node_has_a_link_per_beacon_and_reports_each(tmp_path):
    node = PilotNode(home=str(tmp_path / "a"), hostname="agent-a", beacon=["127.0.0.1:9000", "127.0.0.2:9001"],
                     reactor=UDPMemoryReactor())
    assert len(node.link.links) == 2
    info = node.info()
    data = []
    info.addCallback(data.append)
    info = data[0]
    assert info["beacon"] == "127.0.0.1:9000" and info["registered"] is False
    assert [(b["beacon"], b["registered"], b["transport"]) for b in info["beacons"]] == [
        ("127.0.0.1:9000", False, "udp"), ("127.0.0.2:9001", False, "udp")]
    lines = beacon_lines(info)
    assert lines[0].startswith("beacon 127.0.0.1:9000 over udp: NOT registered") and lines[1].startswith("beacon 127.0.0.2:9001")


def test_the_daemon_is_started_with_every_beacon_in_order(tmp_path):
    config = NodeConfig(hostname="agent-a", beacon=["127.0.0.1:9000", "127.0.0.2:9000"], beacon_tls=["127.0.0.1:4443"],
                        beacon_fingerprint=[PIN, PIN])
    args = daemon_control.node_arguments(str(tmp_path), config)
    assert [args[i + 1] for i, a in enumerate(args) if a == "--beacon"] == ["127.0.0.1:9000", "127.0.0.2:9000"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--beacon-tls"] == ["127.0.0.1:4443"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--beacon-fingerprint"] == [PIN, PIN]
    # ... and twistd reads them back the same.
    options = tap.Options()
    options.parseOptions(["node", *args])
    assert options.subOptions["beacon"] == config.beacons and options.subOptions["beacon-fingerprint"] == [PIN, PIN]


def test_pilotctl_init_and_daemon_start_take_beacon_again_and_again(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["init", "--hostname", "agent-a", "--beacon", "127.0.0.1:9000", "--beacon", "127.0.0.2:9000"])
    assert args.beacon == ["127.0.0.1:9000", "127.0.0.2:9000"]
    args = parser.parse_args(["daemon", "start", "--beacon", "127.0.0.1:9000", "--beacon", "127.0.0.2:9000",
                              "--beacon-tls", "127.0.0.1:4443"])
    assert args.beacon == ["127.0.0.1:9000", "127.0.0.2:9000"] and args.beacon_tls == ["127.0.0.1:4443"]
    home = str(tmp_path / "h")
    config = daemon_control.prepare_start(home, hostname="agent-a", beacon=args.beacon, beacon_tls=args.beacon_tls)
    assert config.beacons == args.beacon and config.beacon_tls == ["127.0.0.1:4443"]
    assert not os.path.exists(os.path.join(home, "config.json"))  # saved only once it registers
