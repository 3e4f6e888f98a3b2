#!/usr/bin/env bash
# curl -> forward -> the overlay -> expose -> python -m http.server, on another agent.
#
#   bash examples/forward_curl.sh
#
# Starts a beacon and two agents on this machine (in a temporary directory,
# removed at the end), serves a directory on agent-b with `python -m http.server`
# bound to loopback, publishes it on agent-b's overlay port 80 with
# `pilotctl expose`, and on agent-a makes a local TCP port lead there with
# `pilotctl forward`.  Then plain curl fetches the file: any program that
# speaks TCP (a browser, a Node MCP server, psql) reaches agent-b this way.
set -euo pipefail

PYTHON=${PYTHON:-python3}
pilotctl() { "$PYTHON" -m pilotproto.cli "$@"; }
# twistd as this interpreter runs it (an array, not a function: `kill $!` must reach the process itself)
TWISTD=("$PYTHON" -c "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()")
free_port() { "$PYTHON" -c "import socket, sys; s = socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])" "$1"; }
say() { printf '$ %s\n' "$*" >&2; }

work=$(mktemp -d /tmp/pilot-fwd-XXXXXX)
pids=()
cleanup() {
    for home in "$work/agent-a" "$work/agent-b"; do
        [ -d "$home" ] && pilotctl --home "$home" daemon stop >/dev/null 2>&1 || true
    done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

beacon_port=$(free_port SOCK_DGRAM)
say twistd -n pilot beacon --interface 127.0.0.1 --port "$beacon_port"
"${TWISTD[@]}" -n --pidfile "" --logfile "$work/beacon.log" pilot beacon --interface 127.0.0.1 --port "$beacon_port" &
pids+=($!)
sleep 1

for name in agent-a agent-b; do
    say pilotctl --home "$work/$name" daemon start --hostname "$name" --beacon "127.0.0.1:$beacon_port"
    pilotctl --home "$work/$name" daemon start --hostname "$name" --beacon "127.0.0.1:$beacon_port" >/dev/null
done
say pilotctl --home "$work/agent-a" handshake agent-b "fetch files"
pilotctl --home "$work/agent-a" handshake agent-b "fetch files" >/dev/null
for _ in $(seq 50); do
    pilotctl --home "$work/agent-b" approve agent-a >/dev/null 2>&1 && break
    sleep 0.1
done
say pilotctl --home "$work/agent-b" approve agent-a

# agent-b: a directory served on loopback only, then exposed on the overlay.
mkdir -p "$work/site"
head -c 4194304 /dev/urandom > "$work/site/data.bin"
http_port=$(free_port SOCK_STREAM)
say python -m http.server "$http_port" --bind 127.0.0.1 --directory "$work/site"
"$PYTHON" -m http.server "$http_port" --bind 127.0.0.1 --directory "$work/site" >/dev/null 2>&1 &
pids+=($!)
say pilotctl --home "$work/agent-b" expose 80 "127.0.0.1:$http_port"
pilotctl --home "$work/agent-b" expose 80 "127.0.0.1:$http_port"

# agent-a: a local port that leads to agent-b's overlay port 80.
local_port=$(free_port SOCK_STREAM)
say pilotctl --home "$work/agent-a" forward "127.0.0.1:$local_port" agent-b:80
pilotctl --home "$work/agent-a" forward "127.0.0.1:$local_port" agent-b:80

sleep 0.5  # http.server binding its port
say curl -sS -o "$work/got.bin" "http://127.0.0.1:$local_port/data.bin"
curl -sS --retry 5 --retry-connrefused --retry-delay 1 -o "$work/got.bin" "http://127.0.0.1:$local_port/data.bin"
want=$(sha256sum < "$work/site/data.bin" | cut -d' ' -f1)
got=$(sha256sum < "$work/got.bin" | cut -d' ' -f1)
if [ "$want" != "$got" ]; then
    echo "MISMATCH: sent $want, got $got" >&2
    exit 1
fi
echo "curl fetched 4 MiB through forward -> overlay -> expose, sha256 $got (identical)"
pilotctl --home "$work/agent-a" forward --list
