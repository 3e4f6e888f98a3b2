"""
Issue 14, item 2: two sans-IO beacon servers of one fleet, on a Clock, with
the Redis between them played by a dict (the Lua scripts run on a real Redis
in test_beacon_redis_store.py and the integration tests): each change one
beacon makes is handed to the other as Redis would publish it.
"""

import json

from helpers import SignedNode
from twisted.internet import defer
from twisted.internet.task import Clock

from pilotproto.beacon.fleet import SET_LIVE, RedisFleet
from pilotproto.beacon.redis_store import DELETE_NAME, DELETE_ROW, MailRow, RedisStore, mail_field, mail_value
from pilotproto.beacon.server import BeaconServer
from pilotproto.wire import Endpoint
from pilotproto.wire import beacon as msgs
from pilotproto.wire import relay

A_EP = Endpoint("198.51.100.1", 4001)
B_EP = Endpoint("198.51.100.2", 4002)


class DictRedis:
    """The few commands the fleet sends itself (the store's scripts are not run here)."""

    def __init__(self):
        self.values = {}
        self.published = []
        #: commands sent, by name (one round trip each)
        self.calls = []
        #: Redis is away: reads wait for a reconnection, as txredisapi's do
        self.down = False

    def _read(self, value):
        return defer.Deferred() if self.down else defer.succeed(value)

    def get(self, key):
        self.calls.append("get")
        return self._read(self.values.get(key))

    def mget(self, keys):
        self.calls.append("mget")
        return self._read([self.values.get(k) for k in keys])

    def set(self, key, value, expire=None):
        self.values[key] = value
        return defer.succeed(True)

    def eval(self, script, keys, args):
        if script == SET_LIVE:
            self.values.update(zip(keys, args[1:]))
            return defer.succeed(len(keys))
        self.values.pop(keys[0], None)
        return defer.succeed(1)

    def publish(self, channel, message):
        self.published.append((channel, message))
        return defer.succeed(1)


class Beacon:
    def __init__(self, name, clock, redis):
        self.pushed = []
        self.store = RedisStore(clock, name, hold=3600)
        self.server = BeaconServer(clock, store=self.store, send=lambda d, ep: self.pushed.append((msgs.decode(d) if d[0] == msgs.KIND else d, ep)))
        self.fleet = RedisFleet(clock, self.server, self.store, name)
        self.server.join_fleet(self.fleet)
        self.fleet.connected(redis)

    def changes(self) -> list:
        """What this beacon's store would publish, in order (and the queue emptied)."""
        out = []
        while self.store.pending:
            change = self.store._queue.popleft()
            out.append(change.args[1] if change.script in (DELETE_NAME, DELETE_ROW) else change.args[2])
        return out


def fleet_of_two():
    clock, redis = Clock(), DictRedis()
    clock.advance(1_000_000)
    one, two = Beacon("one", clock, redis), Beacon("two", clock, redis)
    return clock, redis, one, two


def sync(clock, *beacons):
    """Deliver every beacon's changes to every other, as Redis pub/sub does."""
    for beacon in beacons:
        for event in beacon.changes():
            for other in beacons:
                other.fleet.changed(event.encode())
    clock.advance(0)


def test_a_name_registered_on_one_beacon_is_held_on_the_other_and_its_changes_are_not_written_back():
    clock, redis, one, two = fleet_of_two()
    a = SignedNode(one.server, A_EP, "agent-a")
    assert isinstance(a.register(), msgs.Registered)
    sync(clock, one, two)
    assert two.server.registry.holder_of("agent-a") == a.key
    assert two.store.pending == 0  # applied muted: nothing echoed back
    assert two.server.counters["fleet_changes"] >= 1 and one.server.counters["fleet_changes"] == 0
    thief = SignedNode(two.server, B_EP, "agent-a")
    [error] = [thief.register()]
    assert isinstance(error, msgs.Error) and error.code == "name_taken"

    assert isinstance(a.release(), msgs.Ok)
    sync(clock, one, two)
    assert two.server.registry.holder_of("agent-a") is None


def test_a_lookup_on_one_beacon_finds_a_node_live_on_the_other_if_it_may():
    clock, redis, one, two = fleet_of_two()
    a, b = SignedNode(one.server, A_EP, "agent-a"), SignedNode(two.server, B_EP, "agent-b")
    a.register(), b.register()
    sync(clock, one, two)
    # Private: the answer (sent when "Redis" answers) is not_found.
    assert a.send(a.signed(msgs.Lookup(5, False, b"agent-b"))) == []
    [(refused, _)] = one.pushed
    assert isinstance(refused, msgs.Error) and refused.code == "not_found"
    b.set_visibility([a.key], 1)
    sync(clock, one, two)
    assert one.server.visibility.allows(b.key, a.key)
    one.pushed.clear()
    assert a.send(a.signed(msgs.Lookup(5, False, b"agent-b"))) == []
    [(found, to)] = one.pushed
    assert isinstance(found, msgs.LookupResult) and found.public_key == b.key and to == A_EP
    assert found.endpoints[0] == B_EP
    assert one.server.counters["fleet_lookups"] == 2


def test_relay_frames_for_a_node_on_the_other_beacon_are_checked_here_and_forwarded_there():
    clock, redis, one, two = fleet_of_two()
    a, b = SignedNode(one.server, A_EP, "agent-a"), SignedNode(two.server, B_EP, "agent-b")
    a.register(), b.register()
    b.set_visibility([a.key], 1)
    sync(clock, one, two)
    # The first frame finds no location cached: dropped while it is looked up.
    assert a.send(a.relay_frame(b, b"first")) == []
    assert one.server.counters["fleet_relay_dropped_locating"] == 1
    assert a.send(a.relay_frame(b, b"second")) == []
    assert a.send(a.relay_frame(b, b"third")) == []
    clock.advance(0)  # the frames of one reactor turn go in one PUBLISH
    [(channel, message)] = redis.published
    assert channel == two.store.relay_channel("two")
    two.fleet.relayed_in(message)
    [(second, to), (third, _)] = two.pushed
    assert to == B_EP and relay.decode_from_beacon(second).payload == b"second"
    assert relay.decode_from_beacon(third).payload == b"third"
    assert one.server.counters["fleet_relayed_out"] == 2 and two.server.counters["fleet_relayed_in"] == 2
    # A forged tag is dropped by the sender's beacon: nothing crosses.
    forged = bytearray(a.relay_frame(b, b"forged"))
    forged[-1] ^= 1
    a.send(bytes(forged))
    clock.advance(0)
    assert len(redis.published) == 1


def test_mail_posted_on_one_beacon_is_pushed_by_the_recipients_beacon_and_its_ack_clears_it_everywhere():
    clock, redis, one, two = fleet_of_two()
    a, b = SignedNode(one.server, A_EP, "agent-a"), SignedNode(two.server, B_EP, "agent-b")
    a.register(), b.register()
    sync(clock, one, two)
    [ok] = a.handshake("agent-b")
    assert isinstance(ok, msgs.Ok)
    assert one.pushed == []  # B is not live on beacon one: it does not push
    sync(clock, one, two)
    [(deliver, to)] = two.pushed
    assert isinstance(deliver, msgs.Deliver) and to == B_EP
    assert isinstance(msgs.decode(deliver.datagram), msgs.HandshakeRequest)
    assert len(one.server.mailbox) == len(two.server.mailbox) == 1
    b.ask(b.signed(msgs.MailAck(9, deliver.mail_id)))
    sync(clock, one, two)
    assert len(one.server.mailbox) == len(two.server.mailbox) == 0


def test_a_stale_or_repeated_change_is_harmless_and_a_bad_one_is_counted():
    clock, redis, one, two = fleet_of_two()
    row = MailRow(7, b"s" * 32, ("name", "agent-z"), ("handshake", 1), b"\xb0x", clock.seconds() + 60)
    event = json.dumps({"from": "one", "op": "put_mail", "field": mail_field(7), "value": mail_value(row)}).encode()
    two.fleet.changed(event)
    two.fleet.changed(event)
    assert len(two.server.mailbox) == 1
    two.fleet.changed(b"not json")
    assert two.server.counters["fleet_bad_changes"] == 1


def test_twistd_pilot_beacon_takes_a_redis_store_but_not_with_a_state_dir(tmp_path):
    import pytest
    from twisted.python import usage

    from pilotproto.beacon.fleet_service import FleetService
    from pilotproto.tap import Options, makeService

    options = Options()
    options.parseOptions(["beacon", "--port", "0", "--store", "redis://127.0.0.1:1/3"])
    service = makeService(options, reactor=Clock())
    assert isinstance(service.fleet, FleetService) and service.fleet.address.db == 3
    assert service.server.fleet is service.fleet.fleet
    for bad in (["--store", "redis://127.0.0.1:1/0", "--state-dir", str(tmp_path)], ["--store", "mysql://x"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(["beacon", *bad])
