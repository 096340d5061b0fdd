"""execve argv/envp blocks (bpf/strv.h) decoded without BPF (tracer/strv.py): element and array statuses,
the kernel's copy after a successful exec, the old memory after a failed one."""

from __future__ import annotations

from tracer import layout, strv
from tracer.events import UNVERIFIED

C = layout.const
HDR, ELEM = layout.packer("strv"), layout.packer("strv_elem")
OK, TRUNC, FAULT = C("RS_OK"), C("RS_TRUNC"), C("RS_FAULT")
ADDR = 0x7FFD_0000_5000


def block(status: int, elems: list[tuple[int, bytes]], err: int = 0) -> bytes:
    body = b"".join(ELEM.pack(st, 0, -14 if st == FAULT else 0, len(b)) + b for st, b in elems)
    return HDR.pack(len(elems), status, 0, err, HDR.size + len(body)) + body


def slot(es: int, xs: int, elen: int, xoff: int, xlen: int) -> tuple:
    return (1, C("RK_STRV"), es, xs, 0, 0, 0, elen, xoff, xlen, 0, 0, 0, 0)


def run(entry: bytes, exit_: bytes, *, ret: int, es: int = OK, xs: int = OK, recover: bool = True):
    data = entry + exit_
    return strv.decode(slot(es, xs, len(entry), len(entry), len(exit_)), data, 0, ADDR, ret, recover)


def test_entry_equal_to_the_kernels_copy_is_verified() -> None:
    val, info = run(block(OK, [(OK, b"ls"), (OK, b"-l")]), b"ls\0-l\0", ret=0)
    assert val == ["ls", "-l"]
    assert info == {"status": "ok", "errno": None, "count": 2, "len": 4, "source": "enter", "addr": ADDR,
                    "elements": [{"status": "ok", "len": 2}, {"status": "ok", "len": 2}],
                    "verified": True, "verified_by": "kernel_copy"}


def test_script_or_race_differs_from_the_kernels_copy() -> None:
    val, info = run(block(OK, [(OK, b"./s.sh")]), b"/bin/sh\0./s.sh\0", ret=0)
    assert val == ["./s.sh"] and info["status"] == "changed" and info["value_at_exit"] == ["/bin/sh", "./s.sh"]
    assert info["verified"] is False


def test_cut_array_and_elements() -> None:
    val, info = run(block(TRUNC, [(OK, b"a"), (TRUNC, b"b" * 255)]), b"", ret=-2, xs=C("RS_NONE"), recover=False)
    assert val == ["a", "b" * 255]
    assert (info["status"], info["count"], info["array_truncated"]) == ("truncated", None, True)
    assert info["elements"][1] == {"status": "truncated", "len": 255}
    assert info["unverified_reason"] == UNVERIFIED["no_exit"]


def test_unreadable_element_and_array() -> None:
    val, info = run(block(FAULT, [(OK, b"a"), (FAULT, b"")], err=-14), b"", ret=-2, xs=C("RS_NONE"))
    assert val == ["a", None] and info["status"] == "missing" and info["errno"] == 14
    assert info["array_errno"] == 14 and info["elements"][1] == {"status": "missing", "len": 0, "errno": 14}
    val, info = run(block(FAULT, [], err=-14), b"", ret=-2, xs=C("RS_NONE"))
    assert val is None and info["status"] == "missing"


def test_kernel_copy_cut_by_the_data_area() -> None:
    val, info = run(block(FAULT, [], err=-14), b"ls\0-la", ret=0, xs=TRUNC)
    assert val == ["ls", "-la"]
    assert info["status"] == "truncated" and info["elements"][-1]["status"] == "truncated"
    assert info["verified_by"] == "kernel_copy" and info["entry_status"] == "missing"


def test_failed_exec_equal_again_at_exit() -> None:
    b = block(OK, [(OK, b"x")])
    val, info = run(b, b, ret=-2)
    assert val == ["x"] and info["verified_by"] == "enter_exit_equal" and info["verified_at_exit"] is True
