"""Monitor policies without BPF: parsing and validation (every error, with its line), the CLI's
--check-policy and --policy errors, and rule matching on synthesized openat2 events (tracer.monitor)."""

from __future__ import annotations

import io
import os
import pwd
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console

from tracer import globs, opencalls
from tracer.globs import could_match_below, glob_match
from tracer.monitor import Monitor
from tracer.opencalls import normpath, target
from tracer.output import AlertOutput
from tracer.policy import Policy, default_policy, load, parse_text
from tracer.proccontext import ContextReader, container_id

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IDS = ["sensitive-write-follows-symlinks", "sensitive-write", "shadow-access", "ssh-private-key",
               "ssh-authorized-keys-write", "proc-mem", "raw-memory-device", "world-writable-create"]
O_CREAT, O_WRONLY, O_RDWR = os.O_CREAT, os.O_WRONLY, os.O_RDWR
NO_SYMLINKS, IN_ROOT = 0x04, 0x10

BAD = """\
version = 2

[[rule]]
id = "etc-write"
severity = "severe"
description = "x"
path = "/etc/**"
flags.any = [
    "O_WRONLY",
    "O_WRONGLY",
]
colour = "red"

[[rule]]
severity = "low"
description = "no id"
path = ["etc/passwd"]

[[rule]]
id = "unreadable"
severity = "low"
description = "reserved"
comm = "x"

[rule.resolve]
some = ["RESOLVE_BENEATH"]

[rule.mode]
any = "0o002"

[[rule]]
id = "etc-write"
severity = "low"
description = "again"
uid = -1
result = "ok"
read_status = ["missng"]

[[rule]]
id = "empty"
severity = "low"
description = "no conditions"
"""

BAD_ERRORS = [
    (1, "unknown top-level key 'version'; rules are [[rule]] tables"),
    (5, "rule 'etc-write': severity 'severe' is not one of info, low, medium, high, critical"),
    (10, "rule 'etc-write': flags.any: unknown value 'O_WRONGLY' (did you mean 'O_WRONLY'?)"),
    (12, "rule 'etc-write': unknown key 'colour'"),
    (14, "rule #2: missing 'id' (every rule needs id, severity and description)"),
    (17, "rule #2: path glob 'etc/passwd' must be absolute (start with /); use `filename` to match the path "
         "as the caller passed it"),
    (20, "rule 'unreadable': id 'unreadable' is reserved for the monitor's own alerts "
         "(unreadable, changed, unresolved, lost)"),
    (26, "rule 'unreadable': unknown key resolve.some; use any, all, none"),
    (29, "rule 'unreadable': mode.any must be mode bits as an integer, e.g. 0o002 (got '0o002')"),
    (35, "rule 'etc-write': uid must be a user id or a non-empty list of user ids (integers >= 0)"),
    (36, "rule 'etc-write': result must be \"succeeded\" or \"failed\", not 'ok'"),
    (37, "rule 'etc-write': read_status: unknown value 'missng' (did you mean 'missing'?)"),
    (39, "rule 'empty': no conditions: the rule would match every call (add path, flags, comm, ...)"),
]


# --- parsing and validation -------------------------------------------------------------------------------


def test_default_policy_loads() -> None:
    p = load([default_policy()])
    assert [r.id for r in p.rules] == DEFAULT_IDS
    shadow = p.rules[2]
    assert shadow.severity == "critical" and shadow.where.endswith("default.toml:21")
    assert p.rules[0].resolve == {"none": ("RESOLVE_NO_SYMLINKS", "RESOLVE_BENEATH", "RESOLVE_IN_ROOT")}
    assert p.rules[-1].mode == {"any": 0o002}


def test_every_error_with_its_line() -> None:
    rules, errors = parse_text(BAD)
    assert rules == []
    # The duplicate id is reported once the rule parsed without errors; here rule 4 has errors of its own.
    assert errors == BAD_ERRORS


def test_duplicate_id_and_syntax_error() -> None:
    text = '[[rule]]\nid = "a"\nseverity = "low"\ndescription = "d"\ncomm = "x"\n\n' * 2
    assert parse_text(text)[1] == [(7, "duplicate rule id 'a' (first defined at line 1)")]
    rules, errors = parse_text('[[rule]]\nid = "a"\nseverity = low\n')
    assert rules == [] and len(errors) == 1
    line, msg = errors[0]
    assert line == 3 and msg.startswith("TOML syntax error: Invalid value")
    assert parse_text("")[1] == [(1, "no rules: add [[rule]] tables (see README, Policy format)")]


def test_subtable_and_inline_forms_are_located() -> None:
    text = textwrap.dedent("""\
        [[rule]]
        id = "a"
        severity = "low"
        description = "d"
        [rule.flags]
        all = ["O_RDONLY"]
        none = ["O_BOGUS"]
        [[rule]]
        id = "b"
        severity = "low"
        description = "d"
        resolve = { any = ["RESOLVE_NOPE"] }
        """)
    assert parse_text(text)[1] == [
        (7, "rule 'a': flags.none: unknown value 'O_BOGUS'"),
        (12, "rule 'b': resolve.any: unknown value 'RESOLVE_NOPE' (did you mean 'RESOLVE_NO_XDEV'?)")]


def tracer_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_check_policy_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    proc = tracer_cli("monitor", "openat2", "--check-policy", str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"{bad}:{line}: {msg}" for line, msg in sorted(BAD_ERRORS)]
    ok = tracer_cli("monitor", "openat2", "--check-policy", str(default_policy()))
    assert ok.returncode == 0 and ok.stderr == ""
    assert ok.stdout == f"{default_policy()}: valid, 8 rules ({', '.join(DEFAULT_IDS)})\n"
    missing = tracer_cli("monitor", "openat2", "--check-policy", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert missing.stderr == f"{tmp_path / 'nope.toml'}:0: cannot read the policy file: No such file or directory\n"


def test_bad_policy_on_a_run_exits_2_before_tracing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    proc = tracer_cli("monitor", "openat2", "--policy", str(bad), "--", "true")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"{bad}:{line}: {msg}" for line, msg in sorted(BAD_ERRORS)]
    # The same rule id in two files (here: the default policy given twice) is an error too.
    dup = tracer_cli("monitor", "openat2", "--with-default", "--policy", str(default_policy()))
    assert dup.returncode == 2
    assert len(dup.stderr.splitlines()) == 8 and "duplicate rule id 'sensitive-write-follows-symlinks'" in dup.stderr


# --- globs, paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("glob", "path", "hit"), [
    ("/etc/**", "/etc", True), ("/etc/**", "/etc/a/b/c", True), ("/etc/**", "/etcx/a", False),
    ("/etc/*", "/etc/a/b", False), ("/proc/*/mem", "/proc/12/mem", True), ("/proc/*/mem", "/proc/1/task/2/mem", False),
    ("/home/*/.ssh/id_*", "/home/u/.ssh/id_ed25519", True), ("/**/*.pub", "/root/.ssh/id_rsa.pub", True),
    ("/etc/[gs]shadow", "/etc/gshadow", True), ("/etc/**/x", "/etc/x", True),
])
def test_glob_match(glob: str, path: str, hit: bool) -> None:
    assert glob_match(glob, path) is hit


def test_many_double_stars_cost_glob_times_path() -> None:
    """Four `**` against a 250-component path: a backtracking matcher takes ~98 s per event; the DP
    matcher does at most len(glob) x len(path) component tests (timing figures: bench, not here)."""
    deep = "/" + "/".join(f"d{i}" for i in range(250))
    assert not glob_match("/**/**/**/**/x", deep)
    assert glob_match("/**/**/**/**/d249", deep) and glob_match("/**/d3/**/d100/**/**/d249", deep)
    assert not glob_match("/**/d100/**/d3/**", deep)  # order matters
    assert could_match_below("/**/**/**/**/x", "/".join(["a"] * 200 + ["x"]))
    assert not could_match_below("/**/**/**/x", "/".join(["a"] * 200))


def test_glob_cost_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound itself, counted: component tests <= glob components x path components."""
    tests = 0
    real = globs._component

    def counting(pat: str):
        test = real(pat)
        if test is None:
            return None

        def counted(s: str) -> bool:
            nonlocal tests
            tests += 1
            return test(s)
        return counted

    monkeypatch.setattr(globs, "_component", counting)
    globs.compile_glob.cache_clear()
    deep = "/" + "/".join(["a"] * 250)
    for g in ("/**/**/**/**/x", "/**/a/**/a/**/a/**/b", "/**/*/**/*/**/*/**/*/x"):
        tests = 0
        assert not glob_match(g, deep)
        assert 0 < tests <= len(g.split("/")) * len(deep.split("/")), (g, tests)
    globs.compile_glob.cache_clear()


def test_lexical_pruning_of_relative_paths() -> None:
    assert could_match_below("/proc/*/mem", "mem") and could_match_below("/etc/**", "anything/at/all")
    assert not could_match_below("/etc/shadow", "passwd") and not could_match_below("/proc/*/mem", "mem/x")
    assert could_match_below("/etc/shadow", "shadow") and could_match_below("/home/*/.ssh/id_*", ".ssh/id_rsa")


def test_target_path() -> None:
    cwd = {"path": "/home/u", "best_effort": True, "via": "cwd"}
    assert normpath("//etc/../etc/./shadow") == "/etc/shadow"
    assert target("//etc/./shadow", None, cwd) == {"path": "/etc/shadow", "best_effort": False, "basis": "absolute"}
    assert target("/../etc/shadow", None, cwd) == {"path": "/etc/shadow", "best_effort": False, "basis": "absolute"}
    # /etc/.. is the parent of what /etc points to if /etc is a symlink: the text is not the kernel's walk.
    assert target("/etc/../etc/shadow", None, cwd) == {
        "path": "/etc/shadow", "best_effort": True, "basis": "absolute",
        "uncertain": "`..` after a name that may be a symlink: collapsed as text"}
    assert target("x/../y", None, cwd) == {"path": "/home/u/y", "best_effort": True, "basis": "cwd"}
    # RESOLVE_IN_ROOT: an absolute path (and ..) stays inside the dfd directory.
    fd = {"path": "/srv/root", "best_effort": True, "via": "fd"}
    assert target("/../etc/shadow", {"resolve": IN_ROOT}, fd)["path"] == "/srv/root/etc/shadow"
    gone = {"path": None, "best_effort": True, "via": "fd", "unknown": "fd not open any more"}
    assert target("a", None, gone) == {"path": None, "best_effort": True, "basis": "fd",
                                       "unknown": "fd not open any more"}


# --- matching on synthesized events ------------------------------------------------------------------


def how(flags: int = 0, mode: int = 0, resolve: int = 0) -> dict:
    return {"flags": flags, "mode": mode, "resolve": resolve, "flags_str": "", "resolve_str": ""}


def event(filename: str | None = "/etc/hostname", h: dict | None = None, *, dfd: int = -100, ret: int = 3,
          comm: str = "cat", uid: int = 0, reads: dict | None = None, how_missing: bool = False) -> dict:
    h = None if how_missing else h or how()
    r = {"filename": {"status": "ok" if filename is not None else "missing", "errno": None, "addr": 0x1000},
         "how": {"status": "ok" if h is not None else "missing", "errno": None, "addr": 0x2000}}
    for arg, info in (reads or {}).items():
        r[arg] = {**r[arg], **info}
    return {"kind": "syscall", "syscall": "openat2", "pid": 4242, "tid": 4242, "comm": comm, "uid": uid,
            "ts": 1, "args": {"dfd": dfd, "filename": filename, "how": h, "usize": 24}, "ret": ret,
            "ret_str": str(ret), "reads": r, "missing": [a for a, i in r.items() if i["status"] == "missing"]}


@pytest.fixture
def proc_links(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple]:
    """/proc/PID/{cwd,fd/N} as the monitor will read them: {what: (path, reason)}."""
    links: dict[str, tuple] = {"cwd": ("/home/u", None)}
    monkeypatch.setattr(opencalls, "_readlink", lambda pid, tid, what: links.get(what, (None, "fd not open any more")))
    return links


def fired(policy: Policy | str, ev: dict) -> dict[str, dict]:
    if isinstance(policy, str):
        policy = load_text(policy)
    return {a.rule: a.detail for a in Monitor(policy).check(ev)}


DEFAULT = load([default_policy()])


def test_default_rules_on_events(proc_links) -> None:
    assert fired(DEFAULT, event("/etc/shadow")) == {"shadow-access": {}}
    assert fired(DEFAULT, event("/etc/hostname")) == {}
    w = how(O_WRONLY | O_CREAT, 0o644)
    assert fired(DEFAULT, event("/etc/cron.d/x", w)) == {"sensitive-write-follows-symlinks": {}}
    assert fired(DEFAULT, event("/etc/cron.d/x", how(O_WRONLY, resolve=NO_SYMLINKS))) == {"sensitive-write": {}}
    assert fired(DEFAULT, event("/tmp/x", how(O_CREAT | O_RDWR, 0o777))) == {"world-writable-create": {}}
    assert fired(DEFAULT, event("/tmp/x", how(O_RDWR, 0o777))) == {}  # mode without O_CREAT: ignored by the kernel
    assert fired(DEFAULT, event("/root/.ssh/id_rsa")) == {"ssh-private-key": {}}
    assert fired(DEFAULT, event("/root/.ssh/id_rsa.pub")) == {}


def test_conditions(proc_links) -> None:
    base = '[[rule]]\nid = "r"\nseverity = "low"\ndescription = "d"\n'
    assert fired(base + 'comm = ["ca?", "sh"]\nnot_uid = 1000\n', event()) == {"r": {}}
    assert fired(base + 'comm = "sh"\n', event()) == {}
    assert fired(base + 'uid = [0]\nresult = "failed"\n', event(ret=-2)) == {"r": {}}
    assert fired(base + 'uid = [0]\nresult = "failed"\n', event(ret=3)) == {}
    assert fired(base + 'flags.all = ["O_WRONLY", "O_CREAT"]\n', event(h=how(O_WRONLY | O_CREAT))) == {"r": {}}
    assert fired(base + 'flags.all = ["O_WRONLY", "O_CREAT"]\n', event(h=how(O_RDWR | O_CREAT))) == {}
    assert fired(base + 'flags.none = ["O_RDONLY"]\n', event(h=how(O_RDWR))) == {"r": {}}
    assert fired(base + 'flags.any = ["O_TMPFILE"]\n', event(h=how(os.O_DIRECTORY))) == {}
    assert fired(base + 'mode.all = 0o6000\n', event(h=how(O_CREAT, 0o6755))) == {"r": {}}
    assert fired(base + 'resolve.all = ["RESOLVE_NO_SYMLINKS"]\n', event(h=how(resolve=NO_SYMLINKS))) == {"r": {}}
    assert fired(base + 'filename = "*.so"\n', event("lib/x.so")) == {"r": {}}
    rec = {"filename": {"status": "recovered", "errno": 14}}
    assert fired(base + 'read_status = "recovered"\n', event(reads=rec)) == {"r": {}}
    assert fired(base + 'read_status = "recovered"\n', event()) == {}


def test_unreadable_path_fails_closed(proc_links) -> None:
    ev = event(None, reads={"filename": {"errno": 14, "addr": 1}})
    alerts = Monitor(DEFAULT).check(ev)
    assert [(a.rule, a.severity) for a in alerts] == [("unreadable", "high")]
    assert alerts[0].detail == {"unreadable": ["filename"],
                                "could_match": ["proc-mem", "raw-memory-device", "shadow-access", "ssh-private-key"]}
    assert "errno 14 at 0x1" in alerts[0].description
    assert ev["target"] == {"path": None, "best_effort": False, "basis": "unknown", "unknown": "path unreadable"}
    # Even a call no rule could match raises it: the monitor cannot clear what it cannot see.
    bad_how = event("/tmp/x", how_missing=True)
    assert fired(DEFAULT, bad_how) == {"unreadable": {"unreadable": ["how"], "could_match": ["world-writable-create"]}}
    assert fired(DEFAULT, event(None, reads={"filename": {"status": "missing"}}) | {"missing": ["filename"]})


def test_truncated_path_decides_nothing(proc_links) -> None:
    """A path longer than the read limit is only a prefix: no target is claimed, and neither path nor
    filename globs can clear the call (padding a path must not evade a rule)."""
    prefix = "/etc/" + "a/../" * 101  # what the read kept of /etc/a/../.../shadow
    trunc = {"filename": {"status": "truncated", "truncated": True}}
    ev = event(prefix, reads=trunc)
    alerts = Monitor(DEFAULT).check(ev)
    assert ev["target"]["path"] is None and ev["target"]["basis"] == "truncated"
    assert "truncated after 510 bytes" in ev["target"]["unknown"]
    assert [a.rule for a in alerts] == ["unresolved"]
    assert "shadow-access" in alerts[0].detail["could_match"]
    assert "truncated" in alerts[0].description
    base = '[[rule]]\nid = "r"\nseverity = "high"\ndescription = "d"\n'
    assert [a.rule for a in Monitor(load_text(base + 'filename = "*shadow"\n')).check(event(prefix, reads=trunc))] \
        == ["unresolved"]
    # The same rule on the whole path fires; on an unrelated complete path it stays quiet.
    assert fired(base + 'filename = "*shadow"\n', event("/etc/shadow")) == {"r": {}}
    assert fired(base + 'filename = "*shadow"\n', event("/etc/hostname")) == {}


def load_text(text: str) -> Policy:
    rules, errors = parse_text(text)
    assert errors == []
    return Policy(rules, ["test"])


def test_recovered_is_matched_and_not_unreadable(proc_links) -> None:
    ev = event("/etc/shadow", reads={"filename": {"status": "recovered", "errno": 14, "source": "exit"}})
    assert fired(DEFAULT, ev) == {"shadow-access": {}}


def test_changed_read_names_both_values_and_matches_either(proc_links) -> None:
    ev = event("/tmp/fifo", reads={"filename": {"status": "changed", "value_at_exit": "/etc/shadow"}})
    alerts = Monitor(DEFAULT).check(ev)
    by = {a.rule: a for a in alerts}
    assert set(by) == {"shadow-access", "changed"}
    assert by["shadow-access"].detail == {"matched": ["filename at exit"]}
    assert by["changed"].detail == {"changed": {"arg": "filename", "entry": "/tmp/fifo", "exit": "/etc/shadow"}}
    assert "'/tmp/fifo' at entry, '/etc/shadow' at exit" in by["changed"].description
    assert ev["target"]["path"] == "/tmp/fifo" and ev["target_at_exit"]["path"] == "/etc/shadow"


def test_relative_paths_best_effort_never_clears(proc_links) -> None:
    # Placed best effort under the cwd and matching: fires, marked best effort.
    proc_links["cwd"] = ("/etc", None)
    ev = event("shadow")
    assert fired(DEFAULT, ev) == {"shadow-access": {"best_effort": True}}
    assert ev["dfd_path"] == {"path": "/etc", "best_effort": True, "via": "cwd"}
    # Placed best effort and not matching, but a directory exists where it would: unresolved.
    proc_links["cwd"] = ("/home/u", None)
    alerts = Monitor(DEFAULT).check(event("mem"))
    assert [(a.rule, a.severity) for a in alerts] == [("unresolved", "critical")]
    assert alerts[0].detail == {"could_match": {"proc-mem": ["path"], "raw-memory-device": ["path"]}}
    assert "/home/u/mem is only a best-effort resolution (via cwd)" in alerts[0].description
    # No directory could make it match: quiet.
    assert fired(DEFAULT, event("notes.txt")) == {}
    assert fired(DEFAULT, event("../notes.txt")) == {}
    assert set(fired(DEFAULT, event("../mem"))) == {"unresolved"}  # SOMEDIR/mem all the same
    # An fd that cannot be read back: unknown directory, a rule could match: unresolved.
    alerts = Monitor(DEFAULT).check(ev := event("shadow", dfd=7))
    assert [a.rule for a in alerts] == ["unresolved"]
    assert alerts[0].detail == {"could_match": {"shadow-access": ["path"]}}
    assert ev["dfd_path"] == {"path": None, "best_effort": True, "via": "fd", "unknown": "fd not open any more"}
    proc_links["fd/7"] = ("/etc", None)
    assert fired(DEFAULT, event("shadow", dfd=7)) == {"shadow-access": {"best_effort": True}}


def test_dotdot_after_a_name_is_never_certain(proc_links) -> None:
    """lnk/../shadow with lnk -> /etc/ssh opens /etc/shadow; as text it is ./shadow. A failed call (no
    file the kernel opened to judge on) whose path has `..` after a name cannot be cleared by the text."""
    proc_links["cwd"] = ("/tmp/work", None)
    alerts = Monitor(DEFAULT).check(ev := event("lnk/../shadow", ret=-13))
    assert [(a.rule, a.detail) for a in alerts] == [("unresolved", {"could_match": {"shadow-access": ["path"]}})]
    assert ev["target"] == {"path": "/tmp/work/shadow", "best_effort": True, "basis": "cwd"}
    alerts = Monitor(DEFAULT).check(ev := event("/tmp/lnk/../shadow", ret=-13))
    assert [a.rule for a in alerts] == ["unresolved"] and ev["target"]["uncertain"]
    # Only the components after the last `..` are known: nothing there can be a shadow file.
    assert fired(DEFAULT, event("/tmp/lnk/../notes.txt", ret=-2)) == {}
    # Matching as text still fires, marked best effort.
    assert fired(DEFAULT, event("/etc/x/../shadow")) == {"shadow-access": {"best_effort": True}}
    tail, dotdot = opencalls.known_tail, opencalls.dotdot_after_name
    assert tail("a/../b/./c") == "b/c" and tail("../..") == "" and tail("x") == "x"
    assert dotdot("/a/..") and not dotdot("/../a") and not dotdot("a/b")


def test_exclusions_need_certainty(proc_links) -> None:
    rule = '[[rule]]\nid = "r"\nseverity = "low"\ndescription = "d"\npath = "/home/**"\nnot_path = "/home/*/pub/**"\n'
    assert fired(rule, event("/home/u/pub/x")) == {}  # certainly excluded
    assert fired(rule, event("/home/u/x")) == {"r": {}}
    proc_links["cwd"] = ("/home/u/pub", None)  # excluded only on best-effort grounds: not cleared
    assert fired(rule, event("x")) == {"unresolved": {"could_match": {"r": ["not_path"]}}}


def test_in_root_resolution(proc_links) -> None:
    proc_links["fd/5"] = ("/srv/container", None)
    ev = event("/etc/shadow", how(resolve=IN_ROOT), dfd=5)
    # /srv/container/etc/shadow, not the host's: but the fd was read back after the call, and a reused
    # fd on / would make it the host's: not cleared.
    assert fired(DEFAULT, ev) == {"unresolved": {"could_match": {"shadow-access": ["path"]}}}
    assert ev["target"] == {"path": "/srv/container/etc/shadow", "best_effort": True, "basis": "in_root"}


def test_console_alert_is_escaped(proc_links) -> None:
    buf = io.StringIO()
    out = AlertOutput(Console(file=buf, width=400, highlight=False, force_terminal=False))
    ev = event("/etc/shadow[bold]\x1b[31m\nFORGED\u202e", comm="x\x1b[7m[red]")
    ev["args_str"] = {"dfd": "AT_FDCWD"}
    ev["reads"]["filename"]["status"] = "changed"
    ev["reads"]["filename"]["value_at_exit"] = "/etc/shadow"
    out.alerts(ev, Monitor(DEFAULT).check(ev))
    text = buf.getvalue()
    lines = text.splitlines()
    assert "\x1b" not in text and "\u202e" not in text
    assert lines[0] == " CRITICAL  shadow-access (on the filename at exit values)  Open of a password hash database"
    assert lines[1].startswith(" HIGH  changed  openat2 filename changed while the call ran: ")
    assert "x\\x1b[7m[red][4242/4242] openat2(dfd=AT_FDCWD, " in lines[2]
    assert 'filename="/etc/shadow[bold]\\x1b[31m\\nFORGED\\u202e"' in lines[2]
    assert lines[3] == ("    target /etc/shadow[bold]\\x1b[31m\\nFORGED\\u202e  "
                        "(absolute, lexical: symlinks not resolved)")
    assert len(lines) == 4


# --- hostile policies: normalised globs, unique ids across files, unsafe files ----------------------------


def test_globs_normalised_on_load(tmp_path: Path) -> None:
    """Target paths are normalised lexically, so `/etc//shadow` as written could never match: it is
    matched as `/etc/shadow`, and --check-policy says so with the line."""
    f = tmp_path / "norm.toml"
    f.write_text('[[rule]]\nid = "r"\nseverity = "high"\ndescription = "d"\npath = [\n  "/etc//shadow",\n'
                 '  "/etc/./gshadow",\n  "/etc/../etc/shadow-",\n  "/etc/security/opasswd/",\n  "/etc/passwd",\n]\n'
                 'not_path = "/etc/x/../y"\n')
    (rule,) = load([f]).rules
    assert rule.globs["path"] == ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/security/opasswd",
                                  "/etc/passwd")
    assert rule.globs["not_path"] == ("/etc/y",)
    policy = load([f])
    for p in ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/security/opasswd", "/etc//shadow/"):
        assert [a.rule for a in Monitor(policy).check(event(p))] == ["r"], p
    proc = tracer_cli("monitor", "--check-policy", str(f))
    assert proc.returncode == 0 and proc.stdout == f"{f}: valid, 1 rules (r)\n"
    assert proc.stderr.splitlines() == [
        f"{f}:6: note: rule 'r': path glob '/etc//shadow' is matched as '/etc/shadow'",
        f"{f}:7: note: rule 'r': path glob '/etc/./gshadow' is matched as '/etc/gshadow'",
        f"{f}:8: note: rule 'r': path glob '/etc/../etc/shadow-' is matched as '/etc/shadow-'",
        f"{f}:9: note: rule 'r': path glob '/etc/security/opasswd/' is matched as '/etc/security/opasswd'",
        f"{f}:12: note: rule 'r': not_path glob '/etc/x/../y' is matched as '/etc/y'"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nid = "r"\nseverity = "high"\ndescription = "d"\npath = "/etc/*/../shadow"\n')
    proc = tracer_cli("monitor", "--check-policy", str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"{bad}:5: rule 'r': path glob '/etc/*/../shadow': `..` after the wildcard component "
                           "'*' cannot be normalised; write the path without `..`\n")


def test_duplicate_ids_across_files_checked_together(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('[[rule]]\nid = "r"\nseverity = "high"\ndescription = "d"\npath = "/etc/shadow"\n')
    b.write_text('# another team\n[[rule]]\nid = "r"\nseverity = "low"\ndescription = "d"\ncomm = "x"\n')
    for f in (a, b):  # each alone is valid
        assert tracer_cli("monitor", "--check-policy", str(f)).returncode == 0
    both = tracer_cli("monitor", "--check-policy", str(a), "--check-policy", str(b))
    assert both.returncode == 2
    assert both.stderr == f"{b}:2: duplicate rule id 'r' (first defined at {a}:1)\n"
    assert both.stdout == f"{a}: valid, 1 rules (r)\n"
    run = tracer_cli("monitor", "--policy", str(a), "--policy", str(b), "--", "true")
    assert run.returncode == 2 and run.stderr == both.stderr


RULE = '[[rule]]\nid = "r"\nseverity = "high"\ndescription = "d"\npath = "/etc/shadow"\n'


def hostile_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (policy path, the one line --check-policy must print after 'PATH:0: ')."""
    out: dict[str, tuple[Path, str]] = {}
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # a read would block for ever with nothing writing
    out["fifo"] = fifo, "not a regular file (a FIFO): a policy must be a regular file"
    out["device"] = Path("/dev/zero"), "not a regular file (a character device): a policy must be a regular file"
    out["directory"] = tmp_path, "not a regular file (a directory): a policy must be a regular file"
    big = tmp_path / "big.toml"
    big.write_text(RULE + "#" * (1 << 20) + "\n")
    out["big"] = big, f"too large ({big.stat().st_size} bytes; a policy may have 1048576 at most)"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'\xff\xfe[[rule]]\n')
    out["binary"] = binary, "not UTF-8 text"
    ww = tmp_path / "world.toml"
    ww.write_text(RULE)
    ww.chmod(0o666)
    out["world-writable"] = ww, ("writable by others (mode 0o666): they could change what is monitored "
                                 "(chmod go-w FILE)")
    gw = tmp_path / "group.toml"
    gw.write_text(RULE)
    gw.chmod(0o664)
    out["group-writable"] = gw, ("writable by its group (mode 0o664): they could change what is monitored "
                                 "(chmod go-w FILE)")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone may rename a file away and put another in its place
    inside = shared / "p.toml"
    inside.write_text(RULE)
    out["in-writable-dir"] = inside, (f"its directory {shared} is writable by group/others (mode 0o777): they "
                                      "could replace the file")
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs.toml"
        theirs.write_text(RULE)
        os.chown(theirs, 65534, 65534)
        import pwd

        try:
            name = pwd.getpwuid(65534).pw_name
        except KeyError:
            name = "no such user"
        out["other-owner"] = theirs, (f"owned by uid 65534 ({name}), not by root or you: that user could change "
                                      "what is monitored (chown root FILE)")
    return out


def test_unsafe_policy_files_refused_with_one_line(tmp_path: Path) -> None:
    for name, (path, line) in hostile_files(tmp_path).items():
        proc = tracer_cli("monitor", "--check-policy", str(path))
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"{path}:0: {line}\n"), name
    # Loading for a run refuses them the same way, before tracing.
    fifo = tmp_path / "fifo.toml"
    run = tracer_cli("monitor", "--policy", str(fifo), "--", "true")
    assert run.returncode == 2
    assert run.stderr == f"{fifo}:0: not a regular file (a FIFO): a policy must be a regular file\n"


def test_deep_nesting_is_one_line(tmp_path: Path) -> None:
    for text in ("a = " + "[" * 5000 + "]" * 5000 + "\n", "a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n"):
        f = tmp_path / "deep.toml"
        f.write_text(text)
        proc = tracer_cli("monitor", "--check-policy", str(f))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr == f"{f}:1: nested too deeply for a policy (arrays or inline tables within each other)\n"


# --- alert context and process conditions -------------------------------------------------------------


def test_process_context_of_a_live_process() -> None:
    """This test's own process, as /proc shows it: the facts an alert carries."""
    reader = ContextReader()
    comm = Path("/proc/self/comm").read_text().rstrip("\n")
    now = time.monotonic_ns()
    ev = {"pid": os.getpid(), "tid": threading.get_native_id(), "comm": comm, "uid": os.getuid(), "ts": now}
    ctx = reader(ev)
    assert ctx["host"] == socket.gethostname() and ctx["uid"] == os.getuid()
    assert ctx["user"] == pwd.getpwuid(os.getuid()).pw_name
    wall = datetime.fromisoformat(ctx["time"].replace("Z", "+00:00")).timestamp()
    assert abs(wall - time.time()) < 5 and ctx["time"].endswith("Z")
    p = ctx["process"]
    assert p["best_effort"] is True and "unknown" not in p
    assert p["exe"] == os.path.realpath(sys.executable) and p["cmdline"] == Path("/proc/self/cmdline").read_bytes(
        ).decode().split("\0")[:-1]
    assert p["ppid"] == os.getppid() and p["parent_exe"] == os.readlink(f"/proc/{os.getppid()}/exe")
    assert p["cgroup"] == Path("/proc/self/cgroup").read_text().splitlines()[-1].split(":", 2)[2]
    assert p["cmdline_truncated"] is False


def test_process_context_refuses_a_different_process() -> None:
    reader = ContextReader()
    base = {"pid": os.getpid(), "tid": threading.get_native_id(), "uid": 0,
            "comm": Path("/proc/self/comm").read_text().rstrip("\n")}
    # A call made before this process started: its pid was someone else's.
    started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) * 10**9 // os.sysconf(
        "SC_CLK_TCK")
    early = started - reader.mono_to_boot - 10**9
    assert reader.process({**base, "ts": early})["unknown"] == "pid reused: this process started after the call"
    # Another name than the kernel recorded: exec'd (or renamed) since the call.
    renamed = reader.process({**base, "comm": "not-this", "ts": time.monotonic_ns()})
    assert renamed == {"best_effort": True, "source": "/proc after the call",
                       "unknown": "the thread was renamed or exec'd another program since the call"}
    gone = reader.process({**base, "pid": 2**22 + 1, "ts": time.monotonic_ns()})  # above pid_max's maximum
    assert gone["unknown"] == "process exited"


@pytest.mark.parametrize(("cgroup", "cid"), [
    ("/system.slice/docker-" + "a" * 64 + ".scope", "a" * 64),
    ("/kubepods.slice/kubepods-burstable.slice/cri-containerd-" + "0123456789abcdef" * 4 + ".scope",
     "0123456789abcdef" * 4),
    ("/machine.slice/libpod-" + "f" * 64 + ".scope/container", "f" * 64),
    ("/docker/" + "b" * 64, "b" * 64),
    ("/user.slice/user-0.slice/session-1.scope", None), ("/", None), (None, None),
])
def test_container_id(cgroup: str | None, cid: str | None) -> None:
    assert container_id(cgroup) == cid


def test_exe_conditions(proc_links, monkeypatch: pytest.MonkeyPatch) -> None:
    """exe / not_exe / parent_exe: globs on the process's exe (from /proc, checked against the event).
    A process whose facts cannot be checked leaves the condition unknown: never a silent exception."""
    facts = {"best_effort": True, "exe": "/usr/bin/cat", "parent_exe": "/usr/bin/bash"}
    monkeypatch.setattr(ContextReader, "process", lambda self, ev: facts)
    base = '[[rule]]\nid = "r"\nseverity = "high"\ndescription = "d"\npath = "/etc/shadow"\n'
    exc = load_text(base + 'not_exe = ["/usr/sbin/sshd", "/usr/bin/passwd"]\n')
    assert fired(exc, event("/etc/shadow")) == {"r": {}}
    facts["exe"] = "/usr/sbin/sshd"
    assert fired(exc, event("/etc/shadow")) == {}  # the exception holds on the exe, whatever comm says
    facts["exe"] = "/usr/sbin/sshd (deleted)"  # replaced on disk since it started: not the exception
    assert fired(exc, event("/etc/shadow")) == {"r": {}}
    assert fired(base + 'exe = "/usr/bin/*"\n', event("/etc/shadow")) == {}
    facts["exe"] = "/usr/bin/cat"
    assert fired(base + 'exe = "/usr/bin/*"\n', event("/etc/shadow")) == {"r": {"best_effort": True}}
    assert fired(base + 'parent_exe = "/usr/bin/*sh"\n', event("/etc/shadow")) == {"r": {"best_effort": True}}
    facts.clear()
    facts.update({"best_effort": True, "unknown": "process exited"})
    # The exception cannot be checked: the rule fires and says so (never silently excepted).
    assert fired(exc, event("/etc/shadow")) == {"r": {"unchecked": ["not_exe"]}}
    # A positive exe condition on an unknown process is undecided: unresolved.
    alerts = Monitor(load_text(base + 'exe = "/usr/bin/*"\n')).check(event("/etc/shadow"))
    assert [(a.rule, a.severity) for a in alerts] == [("unresolved", "high")]
    assert alerts[0].detail == {"could_match": {"r": ["exe"]}}
    assert "the process's exe is unknown (process exited)" in alerts[0].description
    # exe globs are absolute paths, normalised like path globs.
    assert parse_text(base + 'exe = "sshd"\n')[1] == [
        (6, "rule 'r': exe glob 'sshd' must be absolute (start with /); use `filename` to match the path as the "
            "caller passed it")]


def test_alert_context_in_json_and_console(proc_links, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = {"best_effort": True, "source": "/proc after the call", "exe": "/tmp/x\x1b[31m", "cmdline": ["x", "a b"],
             "cmdline_truncated": False, "ppid": 1, "parent_exe": "/sbin/init", "cgroup": "/docker/" + "c" * 64,
             "container_id": "c" * 64}
    monkeypatch.setattr(ContextReader, "process", lambda self, ev: facts)
    reader = ContextReader()
    ev = event("/etc/shadow")
    (alert,) = Monitor(DEFAULT, reader).check(ev)
    d = alert.to_dict(ev)
    assert d["context"] == {"time": reader.wall_time(ev), "host": socket.gethostname(), "uid": 0, "user": "root",
                            "process": facts}
    assert list(d)[-2:] == ["context", "event"]
    buf = io.StringIO()
    AlertOutput(Console(file=buf, width=400, highlight=False, force_terminal=False)).alerts(ev, [alert])
    line = buf.getvalue().splitlines()[-1]
    assert line == (f"    context {reader.wall_time(ev)} host {socket.gethostname()} uid 0 (root) exe /tmp/x\\x1b[31m "
                    f"cmdline x 'a b' ppid 1 (/sbin/init) cgroup /docker/{'c' * 64} container cccccccccccc  "
                    "(process: best effort, /proc after the call)")


# --- judged on the file the kernel opened (the event's `opened` object) ------------------------------------


def opened(path: str | None, mode: str = "0o100640", status: str = "ok") -> dict:
    return {"status": status, "path": path, "dev": "8:1", "ino": 4242, "mode": mode,
            "reason": None if status == "ok" else "cut"}


def test_racing_writer_alerts_on_the_opened_file(proc_links) -> None:
    """The path read after the kernel's copy says harmless-xx; the kernel opened /etc/shadow."""
    ev = event("/tmp/harmless-xx", reads={"filename": {"status": "recovered", "errno": 14}})
    ev["opened"] = opened("/etc/shadow")
    assert fired(DEFAULT, ev) == {"shadow-access": {"matched": ["opened"]}}
    buf = io.StringIO()
    ev["args_str"] = {"dfd": "AT_FDCWD"}
    out = AlertOutput(Console(file=buf, width=400, highlight=False, force_terminal=False))
    out.alerts(ev, Monitor(DEFAULT).check(ev))
    lines = buf.getvalue().splitlines()
    assert lines[0] == " CRITICAL  shadow-access (on the opened values)  Open of a password hash database"
    assert lines[1].endswith(' -> opened "/etc/shadow" (dev 8:1, ino 4242, mode 0o100640)')  # the call line
    # Both agree: both named.
    assert fired(DEFAULT, event("/etc/shadow") | {"opened": opened("/etc/shadow")}) == {
        "shadow-access": {"matched": ["entry", "opened"]}}


def test_symlink_dotdot_alerts_on_the_opened_file(proc_links) -> None:
    proc_links["cwd"] = ("/tmp/work", None)
    ev = event("lnk/../shadow") | {"opened": opened("/etc/shadow")}  # lnk -> /etc/ssh
    assert fired(DEFAULT, ev) == {"shadow-access": {"matched": ["opened"]}}
    # The same call opening ./shadow for real: the kernel's file clears what the text left unknown.
    assert fired(DEFAULT, event("lnk/../shadow") | {"opened": opened("/tmp/work/shadow")}) == {}


def test_opened_file_decides_what_the_path_leaves_unknown(proc_links) -> None:
    proc_links["cwd"] = (None, "directory deleted (/tmp/gone (deleted))")
    assert set(fired(DEFAULT, event("mem"))) == {"unresolved"}
    assert fired(DEFAULT, event("mem") | {"opened": opened("/tmp/gone/mem")}) == {}
    # A path the monitor could not read: the kernel's file stands for it (no `unreadable`).
    unread = event(None, reads={"filename": {"errno": 14, "addr": 1}})
    assert fired(DEFAULT, unread | {"opened": opened("/etc/gshadow")}) == {"shadow-access": {"matched": ["opened"]}}
    assert fired(DEFAULT, unread | {"opened": opened("/etc/hostname")}) == {}
    # A cut or unavailable opened path decides nothing: as without it.
    assert set(fired(DEFAULT, event("mem") | {"opened": opened("/tmp/gone/m", status="truncated")})) == {"unresolved"}
    assert set(fired(DEFAULT, unread | {"opened": opened(None, status="unavailable")})) == {"unreadable"}
    # A failed call opened nothing: an `opened` object there is ignored.
    assert set(fired(DEFAULT, event("mem", ret=-2) | {"opened": opened("/tmp/x")})) == {"unresolved"}


def test_open_by_handle_judged_on_the_opened_file(proc_links) -> None:
    ev = {**event(None), "syscall": "open_by_handle_at", "args": {"mountdirfd": 3, "handle": 0x1000, "flags": 0},
          "reads": {}, "missing": [], "opened": opened("/etc/shadow")}
    assert fired(DEFAULT, ev) == {"shadow-access": {"matched": ["opened"]}}
    assert set(fired(DEFAULT, {**ev, "opened": None})) == {"unresolved"}


def test_world_writable_create_judges_the_real_mode(proc_links) -> None:
    """creat(path, 0666) under umask 022 creates a 0644 file: the kernel's mode decides, not the request."""
    def creat(mode_opened: str | None, ret: int = 3) -> dict:
        ev = {**event("/tmp/x"), "syscall": "creat", "args": {"pathname": "/tmp/x", "mode": 0o666}, "ret": ret,
              "reads": {"pathname": {"status": "ok", "errno": None, "addr": 0x1000}}, "missing": []}
        return ev | ({"opened": opened("/tmp/x", mode_opened)} if mode_opened else {})
    assert fired(DEFAULT, creat("0o100644")) == {}
    assert fired(DEFAULT, creat("0o100666")) == {"world-writable-create": {"matched": ["entry", "opened"]}}
    assert fired(DEFAULT, creat("0o20666")) == {}  # /dev/null: a device, not created by O_CREAT
    assert fired(DEFAULT, creat(None)) == {"world-writable-create": {}}  # no kernel mode: the request
    assert fired(DEFAULT, creat(None, ret=-13)) == {}  # nothing was created
