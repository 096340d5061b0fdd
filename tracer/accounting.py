"""Where the calls went: every call a source's programs saw is delivered or counted lost, once, with its
reason (the `reason` of {"kind": "lost"} events and the summary's `lost_by_reason`).

For the syscall source (bpf/trace.bpf.c, record.h ST_*), each call whose entry the programs see ends in
exactly one of: emitted, submit_fail, state_full, no_exit, or still in flight when tracing stops (an exit
without its entry began before tracing did: counted in no_state, not lost). Tracing starts and stops at
one instant for every program (CF_OFF), so no call is half traced while programs attach or detach.

Syscall records go through one BPF ring buffer (tracer/ringbuf.py), which writes no marker: the programs
count each failed output (submit_fail) and, among those, the ones the ring refused (ring_full, -EAGAIN:
no room), per CPU; each drain reports what ring_full added since the previous one, and at the end the
rest is reported: ring_full not reported yet, and submit_fail minus ring_full as "submit_error".

Sources with perf rings (uprobes): a bpf_perf_event_output that failed for lack of room is counted twice
by the kernel: in our submit_fail
counter and in the ring (kernel/events/ring_buffer.c __perf_output_begin: `local_inc(&rb->lost)` and
`event->lost_samples`). The ring reports its count in a PERF_RECORD_LOST marker, but only in front of a
later record that fits: drops after the last record that fitted are reported by no marker. So the
markers read while draining are counted as they come, and at the end (programs stopped, rings drained)
the rest is read from the counters: the ring's lost_samples (PERF_FORMAT_LOST) minus the markers seen
is "ring_full" nobody reported, submit_fail minus lost_samples is "submit_error".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

REASONS: dict[str, str] = {
    "ring_full": "the ring had no room for the record: the consumer was a whole ring behind",
    "submit_error": "the BPF program's output failed for another reason than a full ring",
    "discarded_at_exit": "in the ring when the session was interrupted, not read within the final drain",
    "state_full": "the in-flight table was full when the call entered: its record could not be built",
    "no_exit": "the call entered but its return was never seen (its state was replaced, or the thread "
               "exited during it)",
    "in_flight_at_exit": "the call had entered and not returned when tracing stopped",
}
# Lost records in captures written before reasons were recorded (capture format 1).
UNSPECIFIED = "unspecified"
SHOWN = {"ring_full": "ring full", "submit_error": "output failed", "discarded_at_exit": "discarded at exit",
         "state_full": "in-flight table full", "no_exit": "exit not seen", "in_flight_at_exit": "in flight at exit",
         UNSPECIFIED: "reason not recorded"}

Loss = tuple[int | None, str, int]  # (cpu or None, reason, count)


def ring_residuals(rings: Iterable[object]) -> list[Loss]:
    """Drops the kernel counted on each ring and no marker reported (read after the final drain)."""
    out: list[Loss] = []
    for ring in rings:
        read = getattr(ring, "kernel_lost", None)
        total = read() if read is not None else None
        if total is not None:
            out.append((ring.cpu, "ring_full", max(total - ring.lost_total, 0)))  # type: ignore[attr-defined]
    return [x for x in out if x[2]]


def syscall_losses(rings: Sequence[object], per_cpu: dict[str, list[int]], in_flight: int) -> list[Loss]:
    """The syscall source's losses not reported yet: `per_cpu` holds the record.h counters by name
    ([cpu] -> value, read after the programs were detached), `in_flight` the calls still entered."""
    out: list[Loss] = []
    fails = per_cpu.get("submit_fail", [])
    for ring in rings:
        cpu: int | None = ring.cpu  # type: ignore[attr-defined]
        if cpu is None:  # the one BPF ring buffer: the programs' own counts, per CPU
            full_counts = per_cpu.get("ring_full", [])
            reported = ring.reported  # type: ignore[attr-defined]
            for c, failed in enumerate(fails):
                full = min(full_counts[c] if c < len(full_counts) else 0, failed)
                out.append((c, "ring_full", max(full - reported(c), 0)))
                out.append((c, "submit_error", failed - full))
            continue
        failed = fails[cpu] if cpu < len(fails) else 0
        read = getattr(ring, "kernel_lost", None)
        total = read() if read is not None else None
        full = failed if total is None else min(total, failed)  # the ring counts only its own drops
        out.append((cpu, "ring_full", max(full - ring.lost_total, 0)))  # type: ignore[attr-defined]
        out.append((cpu, "submit_error", failed - full))
    for name, reason in (("state_full", "state_full"), ("no_exit", "no_exit")):
        out += [(cpu, reason, n) for cpu, n in enumerate(per_cpu.get(name, []))]
    out.append((None, "in_flight_at_exit", in_flight))
    return [x for x in out if x[2]]
