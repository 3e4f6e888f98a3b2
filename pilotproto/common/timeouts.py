"""
Every connect timeout, named in one place.

They nest, so that the inner one gives the precise reason before an outer
one gives up: the tunnel handshake (inside a session) < a stream through the
daemon (lookup + handshake + the peer accepting) < a client waiting for the
daemon's answer to that ``connect``.
"""

#: seconds for a tunnel handshake to finish (retries included; lossy relays need them)
TUNNEL_HANDSHAKE = 15.0
#: seconds the daemon waits for a peer to accept a stream (lookup and handshake included)
STREAM_CONNECT = 30.0
#: seconds a client of the control socket waits for the answer to ``connect``
CONTROL_CONNECT = STREAM_CONNECT + 10.0
#: seconds an incoming stream announced on a ``listen`` connection waits for its ``accept``
STREAM_ACCEPT = 5.0
#: seconds a client waits for an ordinary control command's answer
CONTROL_COMMAND = 10.0
#: seconds to open the TCP/TLS connection to the beacon's relay
BEACON_TLS_CONNECT = 10.0
