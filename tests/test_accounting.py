"""The end-of-session loss arithmetic (tracer/accounting.py) on fake rings and counters; the live floods
that check it against real calls are in tests/test_accounting_live.py."""

from __future__ import annotations

from dataclasses import dataclass

from tracer.accounting import REASONS, ring_residuals, syscall_losses
from tracer.events import Stats, summary_of


@dataclass
class FakeRing:
    cpu: int
    lost_total: int           # markers seen while draining
    kernel: int | None        # the ring's lost_samples (None: kernel before 6.0)

    def kernel_lost(self) -> int | None:
        return self.kernel


def test_markers_and_submit_fail_are_one_loss() -> None:
    # CPU 0: 10 outputs failed, all for room; 7 reported by markers, 3 after the last record that fitted.
    # CPU 1: 5 failed, 4 for room (all reported), 1 for another reason.
    rings = [FakeRing(0, 7, 10), FakeRing(1, 4, 4)]
    counters = {"submit_fail": [10, 5], "no_state": [4, 4], "state_full": [0, 2], "no_exit": [1, 0]}
    losses = syscall_losses(rings, counters, in_flight=3)
    assert sorted(losses, key=str) == sorted([(0, "ring_full", 3), (1, "submit_error", 1), (1, "state_full", 2),
                                              (0, "no_exit", 1), (None, "in_flight_at_exit", 3)], key=str)
    # Markers (11) + residuals: every failed output counted once. Exits without entry (no_state) are not
    # lost calls: those calls began before tracing did.
    assert 7 + 4 + sum(n for _, r, n in losses if r in ("ring_full", "submit_error")) == 15


class SharedRing:
    """The syscall records' one BPF ring buffer (tracer/ringbuf.py): no CPU of its own, no count of its own;
    `seen`: the ring_full drops its drains reported, per CPU."""
    cpu = None
    lost_total = 0

    def __init__(self, seen: list[int]) -> None:
        self.seen = seen

    def reported(self, cpu: int) -> int:
        return self.seen[cpu] if cpu < len(self.seen) else 0

    def kernel_lost(self) -> None:
        return None


def test_shared_ring_losses_from_the_programs_counters() -> None:
    # CPU 0: 10 outputs failed, 9 for room (-EAGAIN), 6 of those reported by drains; 1 for another reason.
    # CPU 1: 4 failed, all for room, all reported. CPU 2: nothing failed.
    counters = {"submit_fail": [10, 4, 0], "ring_full": [9, 4, 0], "no_exit": [0, 0, 2]}
    losses = syscall_losses([SharedRing([6, 4])], counters, in_flight=0)
    assert sorted(losses, key=str) == sorted([(0, "ring_full", 3), (0, "submit_error", 1), (2, "no_exit", 2)],
                                             key=str)
    # Reported by drains (10) + reported now: every failed output once.
    assert 6 + 4 + sum(n for _, r, n in losses if r in ("ring_full", "submit_error")) == 14


def test_without_lost_samples_the_counter_decides() -> None:
    assert syscall_losses([FakeRing(0, 7, None)], {"submit_fail": [10]}, 0) == [(0, "ring_full", 3)]


def test_ring_residuals_for_rings_without_counters() -> None:
    class Wrapper:  # a ring that cannot tell
        cpu = 2
    assert ring_residuals([FakeRing(0, 5, 9), FakeRing(1, 2, 2), Wrapper(), FakeRing(3, 0, None)]) == [
        (0, "ring_full", 4)]


def test_summary_breaks_lost_down_by_reason() -> None:
    st = Stats()
    st.add_lost({"kind": "lost", "cpu": 1, "count": 5, "reason": "ring_full"})
    st.add_lost({"kind": "lost", "cpu": None, "count": 2, "reason": "in_flight_at_exit"})
    s = summary_of(st, {}, 0.0, None)
    assert s["lost"] == 7 and s["lost_per_cpu"] == {"1": 5}
    assert s["lost_by_reason"] == {**dict.fromkeys(REASONS, 0), "ring_full": 5, "in_flight_at_exit": 2}


def test_schemas_name_every_reason() -> None:
    import json
    from importlib.resources import files

    from tracer.accounting import UNSPECIFIED

    schema = files("tracer") / "schema"
    lost = json.loads((schema / "lost.json").read_text())
    summary = json.loads((schema / "summary.json").read_text())
    assert lost["properties"]["reason"]["enum"] == [*REASONS, UNSPECIFIED]
    assert summary["properties"]["lost_by_reason"]["propertyNames"]["enum"] == [*REASONS, UNSPECIFIED]


def test_the_user_events_watch_rings_are_accounted_like_the_others() -> None:
    """The watch hands out one CPU's faults through a _CpuRing view of its ring: the drops no marker
    reported, what it still holds (backlog) and a discard at an interrupted exit go through to the ring."""
    from tracer.user_events.watch import _CpuRing

    @dataclass
    class Inner(FakeRing):
        fd: int = 7
        backlog: bool = False

        def discard(self) -> tuple[int, int]:
            self.lost_total += 1
            return 5, 1

    inner = Inner(1, 2, 6)
    view = _CpuRing(None, inner)  # type: ignore[arg-type]
    assert ring_residuals([view]) == [(1, "ring_full", 4)]
    assert view.backlog is False
    view.pending, view.lost = [b"decoded fault", b"another"], 2  # collected, not handed out yet
    assert view.backlog is True
    assert view.discard() == (7, 3) and view.pending == [] and view.lost == 0 and not view.backlog
    assert ring_residuals([view]) == [(1, "ring_full", 3)]  # the discarded marker is counted, not again
