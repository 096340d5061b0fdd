"""A capture's layout identity (tracer/layout.py): the digest of the record headers' PARSED layout, so
that comments, whitespace and the order of the text keep it and anything the decoder reads changes it;
captures of the previous scheme (sha256 of record.h's text) still replay when that text is today's or a
shipped text of today's layout (tracer/layout_texts.py, recomputed here from git history);
a different layout is one error line. Header variants are made on copies of the text, through
layout's own parser (the real files are never edited).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_capture import rewrite_header, write_capture

from tracer import layout
from tracer.capture import Capture, CaptureError
from tracer.cli import cli
from tracer.kenv import BPF_DIR
from tracer.layout_texts import TEXT_LAYOUTS

RECORD_H = (BPF_DIR / "record.h").read_text()
UPROBE_H = (BPF_DIR / "uprobe.h").read_text()
COMMENT = re.compile(r"/\*.*?\*/", re.S)
DEFINE = re.compile(r"^#define [A-Z_][A-Z0-9_]* .*$", re.M)


def digest(record_h: str) -> str:
    return layout.layout_digest(layout.parse_header(record_h))


def uprobe_digest(record_h: str) -> str:
    base = layout.parse_header(record_h)
    return layout.layout_digest(layout.parse_header(UPROBE_H, base), base)


def reworded(text: str) -> str:
    return COMMENT.sub("/* said otherwise, at another length */", text)


def respaced(text: str) -> str:
    """No comments, other indentation and spacing, blank lines, CRLF line ends."""
    lines = [re.sub(r"\s+", "   ", line.strip()) for line in COMMENT.sub("", text).splitlines()]
    return "\r\n\r\n".join("  " + x if x and not x.startswith("#") else x for x in lines) + "\r\n"


def reordered(text: str) -> str:
    """Every #define moved after the structs, in reverse order."""
    text = COMMENT.sub("", text)
    defines = DEFINE.findall(text)
    body = DEFINE.sub("", text)
    return body.replace("#endif", "\n".join(reversed(defines)) + "\n#endif")


def test_the_identity_is_the_digest_of_the_parsed_header() -> None:
    ident = layout.layout_identity()
    assert ident["sha256_of"] == layout.LAYOUT_SCHEME and ident["header"] == "record.h"
    assert ident["sha256"] == digest(RECORD_H)
    assert ident["sha256"] != hashlib.sha256(RECORD_H.encode()).hexdigest()  # not the text's
    assert layout.layout_identity("uprobe.h", ("uprobe_record",))["sha256"] == uprobe_digest(RECORD_H)


@pytest.mark.parametrize("variant", [reworded, respaced, reordered])
def test_comments_whitespace_and_order_keep_the_identity(variant: Callable[[str], str]) -> None:
    text = variant(RECORD_H)
    assert text != RECORD_H
    assert layout.parse_header(text).structs == layout.parse_header(RECORD_H).structs  # the variant parses alike
    assert digest(text) == digest(RECORD_H)
    assert uprobe_digest(text) == uprobe_digest(RECORD_H)


def swap(text: str, a: str, b: str) -> str:
    assert a in text and b in text
    return text.replace(a, "\0").replace(b, a).replace("\0", b)


CHANGES = {  # each changes what some record's bytes mean
    "two fields swap offsets": lambda t: swap(t, "__u32 pid;", "__u32 tid;"),
    "an array's size": lambda t: t.replace("char comm[TASK_COMM_LEN];\n\tstruct read_slot",
                                           "char comm[24];\n\tstruct read_slot"),
    "a field's signedness": lambda t: t.replace("__s16 enter_err;", "__u16 enter_err;"),
    "a field's name": lambda t: t.replace("__u32 xoff;", "__u32 xoffset;"),
    "a read status": lambda t: t.replace("#define RS_TRUNC 3", "#define RS_TRUNC 9"),
    "a record flag": lambda t: t.replace("#define RF_OPENED 16", "#define RF_OPENED 32"),
    "a cap": lambda t: t.replace("#define STR_CAP 512", "#define STR_CAP 256"),
    "a dimension": lambda t: t.replace("#define MAX_ARGS 6", "#define MAX_ARGS 5"),
    "a new constant": lambda t: t.replace("#define RS_SKIPPED 6", "#define RS_SKIPPED 6\n#define RS_OTHER 7"),
    "a struct in data[]": lambda t: t.replace("__u16 len;\n}", "__u16 len;\n\t__u16 pad2;\n}"),
}


@pytest.mark.parametrize("name", CHANGES)
def test_what_the_decoder_reads_changes_the_identity(name: str) -> None:
    text = CHANGES[name](RECORD_H)
    assert text != RECORD_H, "the change did not apply: record.h changed, update the test"
    assert digest(text) != digest(RECORD_H)


def test_read_slot_changes_the_uprobe_identity_too() -> None:
    """uprobe_record nests struct read_slot (record.h): its identity serializes that struct in full."""
    text = CHANGES["a field's signedness"](RECORD_H)
    assert uprobe_digest(text) != uprobe_digest(RECORD_H)


def test_stats_counters_do_not_count() -> None:
    """ST_* / NSTATS index the live per-CPU stats map only (a capture's trailer names its counters)."""
    text = RECORD_H.replace("#define NSTATS 6", "#define ST_OTHER 6\n#define NSTATS 7")
    assert text != RECORD_H and digest(text) == digest(RECORD_H)


DECODERS = ("decode.py", "opened.py", "strv.py", "recjson.py", "recconsole.py", "capture.py", "export.py",
            "events.py", "user_events/decode.py")


def test_modules_that_decode_captures_never_read_a_counter() -> None:
    """The reason the counters may be left out of the identity: nothing that decodes records uses them."""
    counters = [k for k in layout.layout().consts if layout._COUNTER.fullmatch(k)]
    assert {"ST_EMITTED", "ST_RING_FULL", "NSTATS", "UE_NSTATS"} <= set(counters)
    pkg = Path(layout.__file__).parent
    for mod in DECODERS:
        src = (pkg / mod).read_text()
        used = [c for c in counters if re.search(rf"\b{c}\b", src)]
        assert not used, f"tracer/{mod} uses {used}: they must count in the layout identity (tracer/layout.py)"


# -- captures ------------------------------------------------------------------------------------------


@pytest.fixture
def capfile(tmp_path: Path, tracefs: Path) -> tuple[Path, list[dict]]:
    path = tmp_path / "run.cap"
    return path, write_capture(path)


@pytest.fixture
def tracefs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from test_capture import fake_tracefs

    root = fake_tracefs(tmp_path / "tracefs")
    monkeypatch.setenv("TRACER_TRACEFS", str(root))
    return root


def old_identity(text: bytes) -> dict:
    """What the previous tracer wrote: the sha256 of record.h's text and the struct sizes, no sha256_of."""
    sizes = {s: layout.struct_of(s).size for s in ("sys_record", "read_slot")}
    return {"header": "record.h", "sha256": hashlib.sha256(text).hexdigest(), "sizes": sizes}


def set_layout(path: Path, identity: dict) -> None:
    rewrite_header(path, lambda h: h["sources"][0]["desc"].update(layout=identity))


def one_error_line(path: Path) -> str:
    r = CliRunner().invoke(cli, ["replay", "--json", str(path)])
    errors = [x for x in r.stderr.splitlines() if x.startswith("tracer: ")]
    assert r.exit_code == 1 and len(errors) == 1 and r.stderr.endswith(errors[0] + "\n"), r.stderr
    assert "Traceback" not in r.stderr
    return errors[0]


def test_a_capture_of_the_text_hash_scheme_still_replays(capfile) -> None:
    path, delivered = capfile
    set_layout(path, old_identity((BPF_DIR / "record.h").read_bytes()))
    assert [ev.data for ev in Capture(path)] == delivered
    r = CliRunner().invoke(cli, ["replay", "--json", str(path)])
    assert r.exit_code == 0, r.stderr


def test_a_text_hash_of_other_text_is_refused(capfile) -> None:
    """A text hash cannot tell a comment from a field: other text is refused, as it was."""
    path, _ = capfile
    set_layout(path, old_identity((BPF_DIR / "record.h").read_bytes() + b"\n"))
    with pytest.raises(CaptureError, match=r"record layout \(record\.h text sha256 [0-9a-f]{12}\) differs"):
        list(Capture(path))
    assert "replay it with the tracer version that recorded it" in one_error_line(path)


def test_a_different_layout_is_refused_in_one_line(capfile) -> None:
    path, _ = capfile
    ident = layout.layout_identity()
    other = digest(CHANGES["a read status"](RECORD_H))
    set_layout(path, {**ident, "sha256": other})
    line = one_error_line(path)
    assert f"record layout (record.h sha256 {other[:12]}) differs from this tracer's ({ident['sha256'][:12]})" in line


@pytest.mark.parametrize(("scheme", "message"), [
    ("parsed-layout/2", r"record\.h sha256 of 'parsed-layout/2' [0-9a-f]{12}\) differs"),
    ("\x1b[31mred", r"sha256 of '\\x1b\[31mred'"),
    (["parsed-layout/1"], r"layout is not valid: layout sha256_of \['parsed-layout/1'\] is not a string"),
    (1, "layout sha256_of 1 is not a string"),
])
def test_an_unknown_or_malformed_scheme_is_one_line(capfile, scheme: object, message: str) -> None:
    path, _ = capfile
    set_layout(path, {**layout.layout_identity(), "sha256_of": scheme})
    with pytest.raises(CaptureError, match=message):
        list(Capture(path))
    assert "\x1b" not in one_error_line(path)


# -- captures of the text-hash scheme, by the texts tracer shipped (tracer/layout_texts.py) -------------

SCHEME_COMMIT = "d84241f"  # the commit that made the identity the parsed layout's: texts before it count


def shipped_texts(header: str) -> dict[str, bytes] | None:
    """sha256 -> text of every version of bpf/`header` in git history before SCHEME_COMMIT; None without
    that history (an unpacked release)."""
    git = ["git", "-C", str(BPF_DIR.parent)]
    if shutil.which("git") is None or subprocess.run([*git, "cat-file", "-e", f"{SCHEME_COMMIT}^{{commit}}"],
                                                     capture_output=True).returncode:
        return None
    commits = subprocess.run([*git, "log", "--format=%H", f"{SCHEME_COMMIT}^", "--", f"bpf/{header}"],
                             capture_output=True, text=True, check=True).stdout.split()
    texts = (subprocess.run([*git, "show", f"{c}:bpf/{header}"], capture_output=True, check=True).stdout
             for c in commits)
    return {hashlib.sha256(t).hexdigest(): t for t in texts}


@pytest.mark.parametrize("header", ["record.h", "uevents_watch.h", "uprobe.h"])
def test_the_table_of_shipped_texts_is_git_history(header: str) -> None:
    texts = shipped_texts(header)
    if texts is None:
        pytest.skip(f"no git history with {SCHEME_COMMIT} beside {BPF_DIR}: the table cannot be recomputed")
    if header == "uprobe.h":  # left out of the table: one text only, today's
        assert list(texts) == [hashlib.sha256((BPF_DIR / header).read_bytes()).hexdigest()]
        return
    assert TEXT_LAYOUTS[header] == {k: layout.layout_digest(layout.parse_header(t.decode())) for k, t in texts.items()}


E927032 = "2dd869e44e373bd9400117d349adbfae990f73ebb432c32eb614d85b252ded3f"  # ST_RING_FULL's comment differs
C3332AD6 = "38883ac364b8682b38aa47cb3d478dc716259c3e7510bee0d4061d3d0eba6cd6"  # no struct ring_head yet


def test_a_shipped_text_of_the_same_layout_replays_another_is_refused(capfile) -> None:
    path, delivered = capfile
    assert TEXT_LAYOUTS["record.h"][E927032] == layout.layout_identity()["sha256"]
    set_layout(path, {**old_identity(b""), "sha256": E927032})
    assert [ev.data for ev in Capture(path)] == delivered
    set_layout(path, {**old_identity(b""), "sha256": C3332AD6})
    assert f"record layout (record.h text sha256 {C3332AD6[:12]}) differs" in one_error_line(path)
