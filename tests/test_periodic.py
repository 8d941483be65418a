"""The workers' background thread (``modelapp/periodic.py``): the stats flusher and the
multi-model sweeper run on it."""

from __future__ import annotations

import threading

from modelapp.periodic import Periodic
from tests.support.servers import wait_for


def test_first_then_ticks_and_a_failing_tick_does_not_end_it(caplog):
    calls: list[str] = []
    seen_inside: list[bool] = []

    def first() -> None:
        calls.append("first")

    def tick() -> None:
        seen_inside.append(periodic.is_current())
        calls.append("tick")
        if calls.count("tick") == 1:
            raise RuntimeError("one bad tick")

    periodic = Periodic("smserve-test", tick, first=first)
    periodic.start(0.01)
    try:
        wait_for(lambda: calls.count("tick") >= 3, deadline=10, what="three ticks")
    finally:
        periodic.stop()

    assert calls[0] == "first"
    assert set(seen_inside) == {True}
    assert not periodic.is_current()
    assert periodic.thread is None
    assert "smserve-test: tick failed." in caplog.text
    assert "one bad tick" in caplog.text
    assert not [t for t in threading.enumerate() if t.name.startswith("smserve-test")]
