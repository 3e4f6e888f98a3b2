"""Shared lab fixture: one lab with a probe server for the NAT tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def lab():
    from pilotproto.lab import Lab
    from pilotproto.lab.probing import start_probe_server

    with Lab() as the_lab:
        start_probe_server(the_lab)
        yield the_lab
