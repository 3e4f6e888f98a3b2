"""What the three pipeline agents share: how to reach their daemon, and the topics."""

from __future__ import annotations

import argparse

#: the scraper publishes one event per page under this prefix, then DONE
SCRAPED = "pipeline.scraped"
DONE = "pipeline.done"


def options(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--home", help="this agent's pilot home (default $PILOT_HOME or ~/.pilot)")
    parser.add_argument("--reporter", default="reporter", help="the reporter agent's name")
    return parser.parse_args()
