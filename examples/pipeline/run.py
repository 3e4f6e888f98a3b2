"""
The seeds' pipeline, as three agents on this machine:

    scraper --events (pipeline.*)--> analyzer --messages--> reporter

    python examples/pipeline/run.py

Starts a beacon and the three agents (each its own daemon, all trusting one
another), then runs reporter.py, analyzer.py and scraper.py as three separate
programs, each talking only to its own daemon through the asyncio SDK.  Run
them yourself against real agents on three machines with ``--home``.
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _local import LocalNet  # noqa: E402


def agent_program(net: LocalNet, name: str, agent) -> subprocess.Popen:
    net.say(f"$ python {name}.py --home {agent.home}")
    return net.spawn([sys.executable, os.path.join(HERE, f"{name}.py"), "--home", agent.home],
                     stdout=subprocess.PIPE, text=True, cwd=HERE)  # fmt: skip


def wait_for_line(process: subprocess.Popen, text: str) -> None:
    for line in process.stdout:
        print(line, end="", flush=True)
        if text in line:
            return
    raise RuntimeError(f"the program ended before saying {text!r}")


if __name__ == "__main__":
    with LocalNet() as net:
        scraper, analyzer, reporter = net.agents("scraper", "analyzer", "reporter")
        report = agent_program(net, "reporter", reporter)
        wait_for_line(report, "waiting")
        analysis = agent_program(net, "analyzer", analyzer)
        wait_for_line(analysis, "subscribed")
        scraping = agent_program(net, "scraper", scraper)
        for process in (scraping, analysis, report):
            for line in process.stdout:
                print(line, end="", flush=True)
            if process.wait(120) != 0:
                sys.exit(f"{process.args[1]} failed")
