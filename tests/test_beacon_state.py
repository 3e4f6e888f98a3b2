"""Issue 9: names outlive restarts and brief absences (the beacon's SQLite state, hold time, release)."""

import os
import sqlite3

import pytest
from helpers import SignedNode, UDPMemoryReactor
from twisted.internet.task import Clock

from pilotproto.beacon.limits import DAY, Limits
from pilotproto.beacon.registry import LAST_SEEN_RESOLUTION
from pilotproto.beacon.server import BeaconServer
from pilotproto.beacon.service import BeaconService
from pilotproto.beacon.store import DB_FILE, MailRow, NameRow, SQLiteStore, VisibilityRow
from pilotproto.errors import InvalidArgument
from pilotproto.rendezvous.registration import BeaconClient
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs

OWNER_EP = Endpoint("198.51.100.7", 40001)
THIEF_EP = Endpoint("203.0.113.9", 40002)
FRIEND_EP = Endpoint("192.0.2.5", 40003)
AWAY_EP = Endpoint("192.0.2.77", 40004)


# -- the store -------------------------------------------------------------------------


def test_the_store_keeps_names_lists_and_mail_and_writes_only_the_latest_change(tmp_path):
    store = SQLiteStore(str(tmp_path))
    key, other = b"k" * 32, b"o" * 32
    store.put_name(NameRow(key, "agent-a", 10.0))
    store.put_name(NameRow(key, "agent-a", 20.0))  # the same row again: one write
    store.put_name(NameRow(other, "gone", 5.0))
    store.delete_name(other)
    store.put_visibility(VisibilityRow(key, 7, frozenset({other, b"x" * 32})))
    mail = MailRow(2**64 - 1, other, ("name", "agent-a"), ("answer", 9, b"r" * 32), b"\xb0signed", 99.5)
    store.put_mail(mail)
    # The new names, the list and the mail went to disk at once; the
    # last_seen refresh waits for the batch, which writes it once.
    writes = store.writes
    assert store.flush() <= 1 and store.flush() == 0
    assert store.writes - writes <= 1
    store.close()

    again = SQLiteStore(str(tmp_path))
    saved = again.load()
    assert saved.names == (NameRow(key, "agent-a", 20.0),)
    assert saved.visibility == (VisibilityRow(key, 7, frozenset({other, b"x" * 32})),)
    assert saved.mail == (mail,)
    again.close()


def test_two_beacons_cannot_share_a_state_directory(tmp_path):
    first = SQLiteStore(str(tmp_path))
    with pytest.raises(InvalidArgument, match="another beacon"):
        SQLiteStore(str(tmp_path))
    first.close()
    SQLiteStore(str(tmp_path)).close()


# -- a restart ------------------------------------------------------------------------------


class Beacon:
    """A sans-IO beacon on a Clock whose state lives in ``state_dir``; ``restart``
    closes it (flushing, as stopping the service does) and opens a new one there."""

    def __init__(self, state_dir, clock):
        self.state_dir = state_dir
        self.clock = clock
        self.pushed = []
        self.server = self._open()

    def _open(self):
        return BeaconServer(self.clock, store=SQLiteStore(self.state_dir), send=lambda d, ep: self.pushed.append((msgs.decode(d), ep)))

    def restart(self):
        self.server.mailbox.stop()
        self.server.store.close()
        self.server = self._open()
        return self.server


def test_a_restart_loses_no_name_no_visibility_list_and_no_mail(tmp_path):
    clock = Clock()
    clock.advance(1_700_000_000)
    beacon = Beacon(str(tmp_path), clock)
    owner = SignedNode(beacon.server, OWNER_EP, "victim")
    friend = SignedNode(beacon.server, FRIEND_EP, "friend")
    away = SignedNode(beacon.server, AWAY_EP, "away")
    for node in (owner, friend, away):
        assert isinstance(node.register(), msgs.Registered)
    assert [type(r) for r in owner.set_visibility([friend.key], version=1)] == [msgs.Ok]
    assert [type(r) for r in away.ask(away.signed(msgs.Unregister(9)))] == [msgs.Ok]
    assert [type(r) for r in friend.handshake("away", "while you were out")] == [msgs.Ok]

    server = beacon.restart()
    thief = SignedNode(server, THIEF_EP, "victim")
    for node in (owner, friend, away):
        node.server = server
    # Right after the restart, nobody is registered: the thief tries first.
    reply = thief.register()
    assert isinstance(reply, msgs.Error) and reply.code == "name_taken"
    assert isinstance(owner.register(), msgs.Registered)
    assert isinstance(friend.register(), msgs.Registered)
    # The owner's list came back: its friend still finds it (the owner did not re-upload).
    assert isinstance(friend.lookup("victim"), msgs.LookupResult)
    assert thief.lookup("victim").code == "not_registered"
    # The mail waited through the restart and reaches its recipient when it is back.
    assert isinstance(away.register(), msgs.Registered)
    clock.advance(0)
    [(push, to)] = [(m, ep) for m, ep in beacon.pushed if isinstance(m, msgs.Deliver)]
    assert to == AWAY_EP and msgs.decode(push.datagram).reason == "while you were out"
    server.store.close()


def test_a_name_is_held_for_the_hold_time_and_freed_early_only_by_its_owner(tmp_path):
    clock = Clock()
    beacon = Beacon(str(tmp_path), clock)
    owner = SignedNode(beacon.server, OWNER_EP, "victim")
    thief = SignedNode(beacon.server, THIEF_EP, "victim")
    owner.register()
    clock.advance(beacon.server.registry.ttl + 1)  # the owner went offline
    assert thief.register().code == "name_taken"
    # Nobody else can release it, and a release needs a fresh nonce.
    assert thief.release("victim").code == "not_found"
    challenge = owner.challenge()
    release = owner.signed(msgs.ReleaseName(3, challenge.nonce, "victim"))
    assert [type(r) for r in owner.ask(release)] == [msgs.Ok]
    assert isinstance(thief.register(), msgs.Registered)
    assert owner.ask(release)[0].code == "stale_nonce"
    assert owner.register().code == "name_taken"
    beacon.server.store.close()


def test_the_hold_time_counts_from_last_seen_across_restarts(tmp_path):
    clock = Clock()
    beacon = Beacon(str(tmp_path), clock)
    hold = beacon.server.registry.hold
    owner = SignedNode(beacon.server, OWNER_EP, "victim")
    owner.register()
    for _ in range(3 * LAST_SEEN_RESOLUTION // 20):
        clock.advance(20)
        assert isinstance(owner.keepalive()[0], msgs.KeepaliveAck)
    last_seen = clock.seconds()
    server = beacon.restart()
    thief = SignedNode(server, THIEF_EP, "victim")
    clock.advance(hold - 1)
    server.expire()
    assert thief.register().code == "name_taken"
    clock.advance(2)
    server.expire()
    assert clock.seconds() - last_seen > hold
    assert isinstance(thief.register(), msgs.Registered)
    server.store.close()


def test_keepalives_are_not_a_write_each(tmp_path):
    clock = Clock()
    beacon = Beacon(str(tmp_path), clock)
    owner = SignedNode(beacon.server, OWNER_EP, "victim")
    owner.register()
    beacon.server.store.flush()
    written = beacon.server.store.writes
    for _ in range(100):
        clock.advance(5)
        owner.keepalive()
        beacon.server.store.flush()
    assert beacon.server.store.writes - written <= 100 * 5 // LAST_SEEN_RESOLUTION + 1
    beacon.server.store.close()


def test_a_key_holds_one_name_and_gives_the_old_one_up_when_it_takes_another():
    clock = Clock()
    server = BeaconServer(clock)
    owner = SignedNode(server, OWNER_EP, "first")
    other = SignedNode(server, THIEF_EP, "first")
    owner.register()
    clock.advance(server.registry.ttl + 1)  # offline: "first" stays held
    assert other.register().code == "name_taken"
    owner.hostname = "second"
    assert isinstance(owner.register(), msgs.Registered)
    # Renaming gave the old name up at once.
    assert isinstance(other.register(), msgs.Registered)
    assert server.registry.holder_of("second") == owner.key


def test_the_service_writes_names_at_once_and_refreshes_within_a_second(tmp_path):
    reactor = UDPMemoryReactor()
    state = str(tmp_path / "state")
    service = BeaconService(reactor, interface="127.0.0.1", port=9000, state_dir=state, limits=Limits(name_hold=2 * DAY))
    service.startService()
    owner = SignedNode(service.server, OWNER_EP, "victim")
    owner.register()

    def names():
        with sqlite3.connect(f"{state}/{DB_FILE}") as db:
            return [row[0] for row in db.execute("SELECT hostname FROM names")]

    assert names() == ["victim"]  # acknowledged, so on disk before the answer left
    owner.hostname = "renamed"
    owner.register()
    assert names() == ["renamed"]
    reactor.advance(1.0)
    service.stopService()
    assert names() == ["renamed"]
    # Stopped, it let go of the directory.
    SQLiteStore(state).close()


# -- the node: never "registered" while its name is refused -----------------------------------


def test_a_node_whose_name_is_refused_does_not_say_it_is_registered():
    from test_beacon_client import make, settle

    clock = Clock()
    link, client = make(clock, "victim")
    client.start()
    settle(clock)
    assert client.registered
    # A beacon without --state-dir restarts, and a thief registers the name first.
    link.server = BeaconServer(clock)
    assert isinstance(SignedNode(link.server, THIEF_EP, "victim").register(), msgs.Registered)
    clock.advance(client.keepalive_interval)
    settle(clock)
    assert client.last_error["code"] == "name_taken"
    assert not client.registered


def test_pilotctl_release_needs_the_identity_and_a_stopped_daemon(tmp_path, monkeypatch):
    from pilotproto.cli import daemon as daemon_control
    from pilotproto.cli import names
    from pilotproto.errors import AlreadyRunning, NotFound
    from pilotproto.identity import load_or_create
    from pilotproto.node.config import NodeConfig

    home = str(tmp_path / "home")
    os.makedirs(home, mode=0o700)
    NodeConfig(hostname="victim", beacon="127.0.0.1:9").save(home)
    with pytest.raises(NotFound, match="holds no identity"):
        names.release_name(home)
    load_or_create(home, start_over=True)
    monkeypatch.setattr(daemon_control, "live_daemon_pid", lambda home: 4242)
    with pytest.raises(AlreadyRunning):
        names.release_name(home)
