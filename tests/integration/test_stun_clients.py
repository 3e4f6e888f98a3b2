"""
Standard STUN clients against a real beacon (``twistd pilot beacon``) on
loopback, with and without alternates:

- coturn's ``turnutils_stunclient`` (the client Debian ships), plain and in
  its RFC 5780 mode (``-f``, or on its own once it sees OTHER-ADDRESS),
  whose second request carries RESPONSE-PORT with CHANGE-REQUEST and whose
  third carries PADDING; it blocks until each answer comes, so a beacon that
  answers to the wrong port hangs it;
- stund's ``stun`` (Debian's stun-client), an RFC 3489 client: no magic
  cookie, CHANGE-REQUEST in every request;
- aioice, gathering a server-reflexive candidate as an ICE agent does, then
  running RFC 5780's filtering and mapping tests through its transactions.

No NAT stands in front of loopback, so every client must see its own
address as the mapping and the beacon as open.  127.0.0.2 is the alternate
address (all of 127/8 is loopback on Linux).  A client that is not
installed is skipped with the package to install; CI installs them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess

import pytest

from .conftest import TWISTD, assert_clean, environment, free_udp_port, wait_for

pytestmark = pytest.mark.integration

PRIMARY, ALTERNATE = "127.0.0.1", "127.0.0.2"
#: a client that has not finished by then is waiting for an answer that never came
CLIENT_TIMEOUT = 10


def _ports_free_on_both(ports) -> bool:
    sockets = []
    try:
        for host in (PRIMARY, ALTERNATE):
            for port in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(s)
                s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in sockets:
            s.close()


def _port_pair():
    for _ in range(20):
        ports = (free_udp_port(), free_udp_port())
        if ports[0] != ports[1] and _ports_free_on_both(ports):
            return ports
    raise AssertionError("no free pair of UDP ports on 127.0.0.1 and 127.0.0.2")


class BeaconProcess:
    """``twistd -n pilot beacon`` in ``config``: "plain", "alt-port" (a second
    port, no second address) or "alternates" (both, so RFC 5780 works)."""

    def __init__(self, workdir, config):
        self.config = config
        self.port, alt_port = _port_pair()
        self.alternate = (ALTERNATE, alt_port) if config == "alternates" else None
        args = ["--interface", PRIMARY, "--port", str(self.port)]
        if config != "plain":
            args += ["--alt-port", str(alt_port)]
        if config == "alternates":
            args += ["--alt-address", ALTERNATE]
        self.log = os.path.join(workdir, f"beacon-{config}.log")
        self.process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "--logfile", self.log, "pilot", "beacon", *args],
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        sockets = {"plain": 1, "alt-port": 2, "alternates": 4}[config]
        started = wait_for(lambda: self._log_text().count("BeaconDatagramProtocol starting") >= sockets, 15)
        assert started, self._log_text()[-3000:]

    @property
    def address(self):
        return (PRIMARY, self.port)

    def _log_text(self) -> str:
        return open(self.log).read() if os.path.exists(self.log) else ""

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        assert_clean(self._log_text())


@pytest.fixture(scope="module", params=["plain", "alt-port", "alternates"])
def beacon(request, tmp_path_factory):
    process = BeaconProcess(str(tmp_path_factory.mktemp("stun")), request.param)
    yield process
    process.stop()


def _run(argv, what):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what} did not finish in {CLIENT_TIMEOUT} s, waiting for an answer the beacon never sent:\n{e.stdout}")


# -- coturn's turnutils_stunclient ----------------------------------------------------


def _turnutils():
    path = shutil.which("turnutils_stunclient")
    if path is None:
        pytest.skip("turnutils_stunclient not found: install Debian's coturn package (apt-get install coturn)")
    return path


_ADDRESS_LINE = re.compile(r"(Response origin|Other addr|UDP reflexive addr): (?:: )?([\d.]+):(\d+)")


def _responses(stdout: str) -> list[dict]:
    """
    turnutils_stunclient's report, one dict per answer: "origin", "other"
    and "mapped" endpoints, or "error" with the code.  Its first log line
    comes out twice, so a log line repeating the one before is dropped.
    """
    responses, current, previous = [], None, None
    for line in stdout.splitlines():
        repeated, previous = line == previous and line.startswith("0: :"), line
        if repeated:
            continue
        if line.startswith("RFC 5780 response"):
            current = {}
            responses.append(current)
        elif error := re.search(r"The response is an error (\d+)", line):
            responses.append({"error": int(error.group(1))})
            current = None
        elif address := _ADDRESS_LINE.search(line):
            if current is None:
                current = {}
                responses.append(current)
            key = {"Response origin": "origin", "Other addr": "other", "UDP reflexive addr": "mapped"}[address.group(1)]
            current[key] = (address.group(2), int(address.group(3)))
            if key == "mapped":
                current = None
    return responses


@pytest.mark.parametrize("rfc5780_flag", [False, True], ids=["plain", "-f"])
def test_turnutils_stunclient_completes(beacon, rfc5780_flag):
    argv = [_turnutils()] + (["-f"] if rfc5780_flag else []) + ["-p", str(beacon.port), PRIMARY]
    for _ in range(3):
        done = _run(argv, "turnutils_stunclient" + (" -f" if rfc5780_flag else ""))
        # In RFC 5780 mode it binds its port + 1, which something else may hold.
        if "Address already in use" not in done.stderr:
            break
    assert done.returncode == 0, done.stdout + done.stderr
    responses = _responses(done.stdout)
    first = responses[0]
    host, port = first["mapped"]
    assert host == PRIMARY and port > 0
    if beacon.alternate is None:
        # No OTHER-ADDRESS, so no RFC 5780 mode unless forced; forced, the
        # CHANGE-REQUESTs get 420, heard on the RESPONSE-PORT it listens on.
        assert first == {"mapped": (PRIMARY, port)}
        assert responses[1:] == ([{"error": 420}, {"error": 420}] if rfc5780_flag else [])
        return
    # OTHER-ADDRESS switches the client to RFC 5780 mode, -f or not.
    # The first request is 20 bytes, so its answer has room for the mapping,
    # OTHER-ADDRESS and MAPPED-ADDRESS only (three times 20 bytes).
    assert first == {"other": beacon.alternate, "mapped": (PRIMARY, port)}
    # 2: CHANGE-REQUEST (IP and port) with RESPONSE-PORT port+1: answered
    # from the alternate socket to port+1, still mapping the request's source.
    # 3: CHANGE-REQUEST with PADDING, sent from the socket at port+1.
    assert responses[1:] == [
        {"origin": beacon.alternate, "other": beacon.alternate, "mapped": (PRIMARY, port)},
        {"origin": beacon.alternate, "other": beacon.alternate, "mapped": (PRIMARY, port + 1)},
    ]


# -- stund's stun (RFC 3489) ------------------------------------------------------


def test_rfc3489_client_completes(beacon):
    stun_client = shutil.which("stun")
    if stun_client is None:
        pytest.skip("stun (an RFC 3489 client) not found: install Debian's stun-client package")
    done = _run([stun_client, "-v", f"{PRIMARY}:{beacon.port}"], "stun (RFC 3489)")
    report = done.stdout + done.stderr  # -v writes what it received to stderr
    # Its exit status is the NAT type it found: 1 is "Open", no NAT.
    assert done.returncode == 1 and "Primary: Open" in report, report
    mapped = re.findall(r"MappedAddress = ([\d.]+):(\d+)", report)
    assert mapped and all(host == PRIMARY for host, _ in mapped)
    changed = set(re.findall(r"ChangedAddress = ([\d.]+):(\d+)", report))
    sources = set(re.findall(r"SourceAddress = ([\d.]+):(\d+)", report))
    if beacon.alternate is None:
        # No CHANGED-ADDRESS to offer, and its CHANGE-REQUESTs get 420.
        assert not changed and sources == {(PRIMARY, str(beacon.port))}
        assert "ErrorCode = 4 20" in report
    else:
        alt_host, alt_port = beacon.alternate
        # CHANGED-ADDRESS is relative to the socket asked: A2:P2 from A1:P1
        # (its test I(2) then asks A2:P1, whose is A1:P2).
        assert (alt_host, str(alt_port)) in changed
        # Answers to its change IP and change port requests came from the sockets asked for.
        assert {(alt_host, str(beacon.port)), (PRIMARY, str(alt_port))} <= sources


# -- aioice ------------------------------------------------------------------------


@pytest.fixture
def aioice_sizes(monkeypatch):
    """The size of each STUN request aioice sends, and of the answers to it, by transaction."""
    from aioice.ice import StunProtocol

    sizes = {}
    send, receive = StunProtocol.send_stun, StunProtocol.datagram_received

    def send_stun(self, message, addr):
        sizes.setdefault(message.transaction_id, (len(bytes(message)), []))
        return send(self, message, addr)

    def datagram_received(self, data, addr):
        sizes[data[8:20]][1].append(len(data))
        return receive(self, data, addr)

    monkeypatch.setattr(StunProtocol, "send_stun", send_stun)
    monkeypatch.setattr(StunProtocol, "datagram_received", datagram_received)
    return sizes


def _assert_no_amplification(sizes):
    # aioice's requests are 20 bytes (28 with CHANGE-REQUEST): answers of
    # three times that, at most, make the beacon a poor amplifier.
    assert sizes and all(answers for _, answers in sizes.values())
    assert all(max(answers) <= 3 * request for request, answers in sizes.values()), sizes


def test_aioice_gathers_its_own_address_as_server_reflexive(beacon, aioice_sizes):
    from aioice import Connection

    async def gather():
        connection = Connection(ice_controlling=True, stun_server=beacon.address)
        try:
            # gather_candidates() leaves 127.0.0.1 out; this is the same path for one address.
            return await connection.get_component_candidates(component=1, addresses=[PRIMARY])
        finally:
            await connection.close()

    candidates = asyncio.run(gather())
    [host] = [c for c in candidates if c.type == "host"]
    srflx = [c for c in candidates if c.type == "srflx"]
    assert len(srflx) == 1, "the beacon gave aioice no server-reflexive candidate"
    assert (srflx[0].host, srflx[0].port) == (host.host, host.port) == (srflx[0].related_address, srflx[0].related_port)
    _assert_no_amplification(aioice_sizes)


def test_aioice_runs_rfc5780_behaviour_tests(beacon, aioice_sizes):
    from aioice import stun
    from aioice.ice import Connection, StunProtocol

    def binding(change=None):
        attributes = {"CHANGE-REQUEST": change} if change is not None else {}
        return stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST, attributes=attributes)

    async def run():
        loop = asyncio.get_running_loop()
        connection = Connection(ice_controlling=True)
        transport, protocol = await loop.create_datagram_endpoint(lambda: StunProtocol(connection), local_addr=(PRIMARY, 0))
        local = transport.get_extra_info("sockname")[:2]
        results = {}
        try:
            response, origin = await protocol.request(binding(), beacon.address)
            results["test I"] = (response.attributes["XOR-MAPPED-ADDRESS"], response.attributes.get("OTHER-ADDRESS"), origin)
            for name, flags in (("change ip and port", 0x06), ("change port", 0x02)):
                try:
                    response, origin = await protocol.request(binding(flags), beacon.address)
                    results[name] = (response.attributes["RESPONSE-ORIGIN"], origin)
                except stun.TransactionFailed as e:
                    results[name] = e.response.attributes["ERROR-CODE"][0]
            if beacon.alternate is not None:
                response, _ = await protocol.request(binding(), (ALTERNATE, beacon.port))
                results["mapping via alternate"] = response.attributes["XOR-MAPPED-ADDRESS"]
        finally:
            transport.close()
            await connection.close()
        return local, results

    local, results = asyncio.run(run())
    _assert_no_amplification(aioice_sizes)
    if beacon.alternate is None:
        assert results == {"test I": (local, None, beacon.address), "change ip and port": 420, "change port": 420}
        return
    alt_host, alt_port = beacon.alternate
    assert results == {
        "test I": (local, beacon.alternate, beacon.address),
        # Filtering: the answers come from the sockets asked for, and get in.
        "change ip and port": ((alt_host, alt_port), (alt_host, alt_port)),
        "change port": ((PRIMARY, alt_port), (PRIMARY, alt_port)),
        # Mapping: the same from the other address (endpoint-independent).
        "mapping via alternate": local,
    }


def test_rfc3489_request_over_a_socket(beacon):
    # The bare RFC 3489 exchange, byte for byte: a 20-byte request with a
    # 16-byte transaction id, answered in kind.
    from pilotproto.wire import stun as ours

    transaction = os.urandom(16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((PRIMARY, 0))
        client.settimeout(CLIENT_TIMEOUT)
        client.sendto(bytes.fromhex("00010000") + transaction, beacon.address)
        try:
            data, origin = client.recvfrom(2048)
        except socket.timeout:
            pytest.fail("the beacon did not answer an RFC 3489 Binding request")
        local = client.getsockname()
    assert data[:2] == bytes.fromhex("0101") and data[4:20] == transaction and origin == beacon.address
    message = ours.decode(data, rfc3489=True)
    assert message.find(ours.MappedAddress).endpoint.as_tuple() == local
    assert all(a.TYPE in (0x0001, 0x0004, 0x0005) for a in message.attributes) and not message.fingerprint
    assert len(data) <= 3 * 20
