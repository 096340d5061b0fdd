"""Captures are untrusted input (tracer/capture.py, tracer/capture_check.py): hostile content under valid
checksums, generated from a good capture, must give one line and exit 1 from `replay`, `replay --json` and
`export` (both formats), and a CaptureError (or a `problem`) from the Capture API — never a traceback, an
import, a file read outside the capture, or unbounded memory.
"""

from __future__ import annotations

import copy
import json
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_capture import frame_ends, write_capture

import tracer
from tracer import capture as cap_mod
from tracer.capture import MAGIC, Capture, CaptureError
from tracer.cli import cli
from tracer.kenv import BPF_DIR

Change = Callable[[dict], object]


def src0(h: dict) -> dict:
    return h["sources"][0]


def setter(path: tuple, value: object) -> Change:
    def change(h: dict) -> None:
        d = h
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return change


DEEP = "@deep@"  # replaced by 100,000 nested lists in the JSON text (json.dumps cannot nest that deep)


# Header changes: each makes the header hostile in one way.
HEADER_CHANGES: dict[str, Change] = {
    "layout header is a system file": lambda h: src0(h)["desc"]["layout"].update(header="/etc/shadow"),
    "layout header climbs out": lambda h: src0(h)["desc"]["layout"].update(header="../../../../etc/passwd"),
    "layout header missing file": lambda h: src0(h)["desc"]["layout"].update(header="nonexistent.h"),
    "layout header another of tracer's": lambda h: src0(h)["desc"]["layout"].update(header="uprobe.h"),
    "layout sizes not a dict": lambda h: src0(h)["desc"]["layout"].update(sizes=[1, 2]),
    "layout sha not hex": lambda h: src0(h)["desc"]["layout"].update(sha256="\x1b[31mred"),
    "layout not a dict": lambda h: src0(h)["desc"].update(layout="record.h"),
    "layout sha256_of a list": lambda h: src0(h)["desc"]["layout"].update(sha256_of=["parsed-layout/1"]),
    "layout sha256_of unknown, with escapes": lambda h: src0(h)["desc"]["layout"].update(sha256_of="\x1b[31mx"),
    "layout of the text scheme, other text": lambda h: src0(h)["desc"]["layout"].pop("sha256_of"),
    "replay class runs the CLI": lambda h: src0(h).update(replay="tracer.__main__:cli"),
    "replay class outside tracer": lambda h: src0(h).update(replay="os:system"),
    "replay class unknown in tracer": lambda h: src0(h).update(replay="tracer.sources:Nope"),
    "replay not a string": lambda h: src0(h).update(replay=["tracer.sources", "SyscallSource"]),
    "version 0": setter(("version",), 0),
    "version -1": setter(("version",), -1),
    "version true": setter(("version",), True),
    "version 1.0": setter(("version",), 1.0),
    "version string": setter(("version",), "2"),
    "version future": setter(("version",), 99),
    "format other": setter(("format",), "pcap"),
    "clock a string": setter(("clock",), "now"),
    "clock offset a string": setter(("clock", "mono_to_wall_ns"), "0"),
    "clock offset huge": setter(("clock", "mono_to_wall_ns"), 10 ** 30),
    "clock offset bool": setter(("clock", "mono_to_wall_ns"), True),
    "kernel a list": setter(("kernel",), ["6.18"]),
    "kernel release an int": setter(("kernel", "release"), 618),
    "tool a string": setter(("tool",), "tracer"),
    "host a dict": setter(("host",), {"a": 1}),
    "session a list": setter(("session",), []),
    "session explain a string": setter(("session", "explain"), "no"),
    "session pids strings": setter(("session", "pids"), ["1"]),
    "sources empty": setter(("sources",), []),
    "sources a dict": setter(("sources",), {"0": {}}),
    "source a string": setter(("sources",), ["syscalls"]),
    "source name an int": lambda h: src0(h).update(name=7),
    "desc a list": lambda h: src0(h).update(desc=[]),
    "desc events not strings": lambda h: src0(h)["desc"].update(events=[1, 2]),
    "syscalls not a list": lambda h: src0(h)["desc"].update(syscalls="openat2"),
    "syscall nr a string": lambda h: src0(h)["desc"]["syscalls"][0].update(nr="437"),
    "syscall nr huge": lambda h: src0(h)["desc"]["syscalls"][0].update(nr=10 ** 20),
    "syscall name with newline": lambda h: src0(h)["desc"]["syscalls"][0].update(name="openat2\nfake"),
    "syscall format an int": lambda h: src0(h)["desc"]["syscalls"][0].update(enter_format=5),
    "syscalls missing": lambda h: src0(h)["desc"].pop("syscalls"),
    "deep nesting": setter(("session", "extra"), DEEP),
    "header a list": lambda h: h.clear(),  # (replaced by a list below)
}


def trailer_changes() -> dict[str, object]:
    return {"trailer a list": [], "trailer kernel a string": {"kernel": "x"},
            "trailer kernel values strings": {"kernel": {"emitted": "5"}},
            "trailer elapsed a string": {"elapsed_s": "1"}, "trailer exit code a float": {"exit_code": 1.5},
            "trailer deep": {"kernel": DEEP}, "trailer not json": b"{\xff"}


def frame(kind: bytes, payload: bytes) -> bytes:
    head = cap_mod.FRAME.pack(kind[0], len(payload), 0)[:8]
    return head + zlib.crc32(payload, zlib.crc32(head)).to_bytes(4, "little") + payload


def hostile(base: bytes, header: object | None = None, trailer: object | None = None,
            extra: bytes = b"") -> bytes:
    """`base` with its header and/or trailer replaced (checksums recomputed), plus extra frames."""
    ends = frame_ends(base)
    head = base[len(MAGIC) + cap_mod.FRAME.size: ends[0]]
    body = base[ends[0]: ends[-2]]  # without the trailer
    tail = base[ends[-2] + cap_mod.FRAME.size: ends[-1]]

    def enc(v: object) -> bytes:
        if isinstance(v, bytes):
            return v
        return json.dumps(v).replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000).encode()

    return (MAGIC + frame(b"H", enc(header) if header is not None else head) + body + extra
            + frame(b"T", enc(trailer) if trailer is not None else tail))


def cases(base: bytes) -> Iterator[tuple[str, bytes]]:
    good = json.loads(base[len(MAGIC) + cap_mod.FRAME.size: frame_ends(base)[0]])
    for name, change in HEADER_CHANGES.items():
        h = copy.deepcopy(good)
        change(h)
        yield name, hostile(base, header=[] if name == "header a list" else h)
    yield "header not json", hostile(base, header=b"{\"version\": 2, ")
    yield "header huge", hostile(base, header=b"[" + b" " * (cap_mod.MAX_FRAME - 2) + b"]")
    for name, t in trailer_changes().items():
        yield name, hostile(base, trailer=t)
    yield "lost frame unknown reason", hostile(base, extra=frame(b"L", cap_mod.LOST.pack(0, 1, 5) + b"because"))
    yield "lost frame short", hostile(base, extra=frame(b"L", b"\0\0"))
    yield "record frame of another source", hostile(base, extra=frame(b"R", cap_mod.REC.pack(9, 0, 1) + b"x"))
    yield "record explanations deep", hostile(base, extra=frame(b"R", cap_mod.REC.pack(0, 0, 0) + b"[" * 100_000))
    yield "second header", hostile(base, extra=frame(b"H", json.dumps(good).encode()))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    import os

    root = tmp_path_factory.mktemp("hostile")
    from test_capture import fake_tracefs

    old = os.environ.get("TRACER_TRACEFS")
    os.environ["TRACER_TRACEFS"] = str(fake_tracefs(root / "tracefs"))
    try:
        path = root / "good.cap"
        write_capture(path)
        return path.read_bytes()
    finally:
        if old is None:
            os.environ.pop("TRACER_TRACEFS", None)
        else:
            os.environ["TRACER_TRACEFS"] = old


@pytest.fixture(scope="module")
def opened() -> Iterator[list[str]]:
    """Every file this process opens while `opened` is non-empty (an audit hook cannot be removed: it
    records only while armed)."""
    seen: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if seen and event == "open" and isinstance(args[0], (str, bytes)):
            seen.append(os.fsdecode(args[0]))

    import os

    sys.addaudithook(hook)
    yield seen


def capture_api(path: Path) -> str | None:
    """The Capture API's verdict: None if every frame replayed, else its error or problem (one line)."""
    try:
        cap = Capture(path)
        for _ in cap:
            pass
        cap.summary()
    except CaptureError as e:
        return str(e)
    return cap.problem.message(path, cap.records) if cap.problem else None


def test_every_hostile_capture_is_one_line(base: bytes, tmp_path: Path, opened: list[str]) -> None:
    runner = CliRunner()
    names = []
    for name, data in cases(base):
        path = tmp_path / "hostile.cap"
        path.write_bytes(data)
        opened[:] = ["armed"]
        verdict = capture_api(path)
        assert verdict is not None and "\n" not in verdict, f"{name}: {verdict!r}"
        for args in (["replay", str(path)], ["replay", "--json", str(path)],
                     ["export", str(path), "--format", "jsonl", "-o", str(tmp_path / "x.jsonl"), "--force"],
                     ["export", str(path), "--format", "chrome", "-o", str(tmp_path / "x.json"), "--force"]):
            r = runner.invoke(cli, args)
            assert isinstance(r.exception, SystemExit), f"{name}: {args[0]} raised {r.exception!r}\n{r.stderr}"
            # One error line, the last (a console replay says what it replays before the events).
            errors = [x for x in r.stderr.splitlines() if x.startswith("tracer: ")]
            assert r.exit_code == 1 and len(errors) == 1 and r.stderr.endswith(errors[0] + "\n"), (
                f"{name}: tracer {' '.join(args[:2])} -> {r.exit_code}\n{r.stderr[-2000:]}")
            assert "Traceback" not in r.stderr
        files = {p for p in opened[1:] if not p.startswith((str(tmp_path), "/proc/self"))}
        own = (str(Path(tracer.__file__).parent), str(BPF_DIR))  # tracer's code and its record headers
        outside = {p for p in files if not p.startswith(own) and "/python3" not in p}
        assert not outside, f"{name}: opened {sorted(outside)}"
        opened[:] = []
        names.append(name)
    assert len(names) >= 50


def test_refusals_say_what_is_wrong(base: bytes, tmp_path: Path) -> None:
    expect = {"layout header is a system file": "layout header '/etc/shadow' is not one of tracer's",
              "replay class runs the CLI": "replay class 'tracer.__main__:cli', which is not one of tracer's",
              "version true": "capture format True", "version 0": "capture format 0",
              "clock offset huge": "clock.mono_to_wall_ns has a wrong type or value",
              "deep nesting": "nested too deeply"}
    for name, data in cases(base):
        if name in expect:
            path = tmp_path / "h.cap"
            path.write_bytes(data)
            with pytest.raises(CaptureError, match=expect[name].replace("(", r"\(").replace("[", r"\[")):
                list(Capture(path))
