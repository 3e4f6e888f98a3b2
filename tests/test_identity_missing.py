"""
A deleted identity is never silently replaced (issue 9): a home that holds a
node's state but no identity.json stops the node with identity_missing, through
the library, ``pilotctl daemon start`` and ``twistd pilot node``; only
``pilotctl init --force`` starts over, as a new address, and says so.
"""

import json
import os
import subprocess
import sys

import pytest
from twisted.python import usage

from pilotproto import tap
from pilotproto.cli.daemon import child_environment
from pilotproto.cli.main import main
from pilotproto.common.home import CONFIG_FILE
from pilotproto.errors import PilotError
from pilotproto.identity import IdentityMissing, load_or_create, orphaned_state
from pilotproto.identity.keys import KEY_FILE, NODE_STATE
from pilotproto.node.config import NodeConfig
from pilotproto.node.inbox import INBOX_DIR
from pilotproto.trust.store import TRUST_FILE, TrustStore

from helpers import UDPMemoryReactor


def a_node_that_lost_its_key(tmp_path, name="home"):
    """A home as a node leaves it (settings, trust store, inbox), then identity.json deleted."""
    home = str(tmp_path / name)
    old = load_or_create(home)
    NodeConfig(hostname="agent-a", beacon="127.0.0.1:9000").save(home)
    store = TrustStore.load(home)
    store.save()
    os.makedirs(os.path.join(home, INBOX_DIR), mode=0o700)
    os.unlink(os.path.join(home, KEY_FILE))
    return home, old


def test_the_state_names_are_the_ones_the_other_layers_use():
    assert set(NODE_STATE) == {CONFIG_FILE, TRUST_FILE, INBOX_DIR}


@pytest.mark.parametrize("left", NODE_STATE)
def test_any_state_without_the_key_is_identity_missing(tmp_path, left):
    home = str(tmp_path / "h")
    os.makedirs(os.path.join(home, left) if left == INBOX_DIR else home, mode=0o700)
    if left != INBOX_DIR:
        with open(os.path.join(home, left), "w") as f:
            f.write("{}")
    with pytest.raises(IdentityMissing) as caught:
        load_or_create(home)
    error = caught.value
    assert error.code == "identity_missing" and left in error.message
    assert "Restore" in error.hint and "init --hostname NAME --force" in error.hint and "NEW address" in error.hint
    assert not os.path.exists(os.path.join(home, KEY_FILE))
    assert PilotError.from_dict(error.to_dict()).code == "identity_missing"


def test_a_new_home_and_an_existing_key_are_fine(tmp_path):
    home = str(tmp_path / "new")
    first = load_or_create(home)
    NodeConfig(hostname="agent-a", beacon="127.0.0.1:9000").save(home)
    assert load_or_create(home) == first and orphaned_state(home) == []


def test_start_over_makes_a_new_key(tmp_path):
    home, old = a_node_that_lost_its_key(tmp_path)
    new = load_or_create(home, start_over=True)
    assert new.public_key != old.public_key and load_or_create(home) == new


def test_the_node_refuses_to_start(tmp_path):
    from pilotproto.node.service import PilotNode

    home, _ = a_node_that_lost_its_key(tmp_path)
    with pytest.raises(IdentityMissing):
        PilotNode(home=home, reactor=UDPMemoryReactor())
    assert not os.path.exists(os.path.join(home, KEY_FILE))


def test_twistd_options_refuse_it_as_a_usage_error(tmp_path):
    home, _ = a_node_that_lost_its_key(tmp_path)
    options = tap.Options()
    with pytest.raises(usage.UsageError, match="init --hostname NAME --force"):
        options.parseOptions(["node", "--home", home])


def run_pilotctl(*argv):
    """pilotctl --json in this process: (exit code, parsed JSON)."""
    import io

    out, err = io.StringIO(), io.StringIO()
    code = main(["--json", *argv], stdout=out, stderr=err)
    return code, json.loads(out.getvalue())


def test_init_without_force_is_identity_missing_and_with_force_starts_over(tmp_path):
    home, old = a_node_that_lost_its_key(tmp_path)
    code, doc = run_pilotctl("--home", home, "init", "--hostname", "agent-a")
    assert code != 0 and doc["code"] == "identity_missing", doc
    assert not os.path.exists(os.path.join(home, KEY_FILE))

    code, doc = run_pilotctl("--home", home, "init", "--hostname", "agent-a", "--force")
    assert code == 0, doc
    data = doc["data"]
    assert data["started_over"] and data["created"] and data["address"] != str(old.address)
    # The old key's trust list is kept, aside: the new key starts with none.
    assert not os.path.exists(os.path.join(home, TRUST_FILE)) and os.path.exists(data["old_trust_moved_to"])
    assert os.path.isdir(os.path.join(home, INBOX_DIR))


def test_init_force_says_it_is_a_new_address(tmp_path):
    import io

    home, _ = a_node_that_lost_its_key(tmp_path)
    out = io.StringIO()
    assert main(["--home", home, "init", "--hostname", "agent-a", "--force"], stdout=out, stderr=io.StringIO()) == 0
    assert "Started over as a NEW address" in out.getvalue()


def test_init_force_never_replaces_a_key_that_is_there(tmp_path):
    home = str(tmp_path / "h")
    key = load_or_create(home)
    code, doc = run_pilotctl("--home", home, "init", "--hostname", "agent-a", "--force")
    assert code == 0 and doc["data"]["address"] == str(key.address) and not doc["data"]["started_over"]


# -- through real processes ----------------------------------------------------------


def test_pilotctl_daemon_start_stops_with_identity_missing(tmp_path):
    home, _ = a_node_that_lost_its_key(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "pilotproto.cli", "--home", home, "--json", "daemon", "start"],
        env=child_environment(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    doc = json.loads(run.stdout)
    assert run.returncode != 0 and doc["code"] == "identity_missing", (run.stdout, run.stderr)
    assert "init --hostname NAME --force" in doc["hint"]
    assert "Traceback" not in run.stdout + run.stderr
    assert not os.path.exists(os.path.join(home, KEY_FILE))


def test_twistd_pilot_node_exits_non_zero_with_a_clean_message(tmp_path):
    home, _ = a_node_that_lost_its_key(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
         "-n", "--pidfile=", "pilot", "node", "--home", home],
        env=child_environment(), cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert KEY_FILE in output and "--force" in output and "[identity_missing]" in output
    assert "Traceback" not in output
    assert not os.path.exists(os.path.join(home, KEY_FILE))
