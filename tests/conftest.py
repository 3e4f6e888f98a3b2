"""
Suite-wide fixtures.

Any failure logged through twisted.logger during a test (an unhandled error
in a Deferred, a ``log.failure`` in a protocol) fails that test: such errors
are bugs even when the assertions pass.  A test that expects one takes the
``logged_failures`` fixture and empties the list it gives.
"""

import gc

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture(autouse=True)
def logged_failures():
    failures = []

    def observer(event):
        if event.get("log_failure") is not None or event.get("isError"):
            failures.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield failures
        # Unhandled errors in Deferreds are only logged when collected.
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
    if failures:
        from twisted.logger import formatEvent

        details = "\n".join(formatEvent(e) + "\n" + str(e.get("log_failure", "")) for e in failures)
        pytest.fail(f"{len(failures)} error(s) were logged during the test:\n{details}")
