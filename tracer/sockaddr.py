"""struct sockaddr as passed to connect/bind/sendto or filled by accept/getsockname."""

from __future__ import annotations

import socket
import struct

_FAMILIES = {socket.AF_UNIX: "AF_UNIX", socket.AF_INET: "AF_INET", socket.AF_INET6: "AF_INET6",
             socket.AF_NETLINK: "AF_NETLINK", socket.AF_PACKET: "AF_PACKET", socket.AF_UNSPEC: "AF_UNSPEC"}


def decode_sockaddr(raw: bytes) -> dict:
    if len(raw) < 2:
        return {"short": True, "raw": raw.hex()}
    (family,) = struct.unpack_from("<H", raw)
    out: dict = {"family": _FAMILIES.get(family, family)}
    if family == socket.AF_INET and len(raw) >= 8:
        out["port"] = struct.unpack_from(">H", raw, 2)[0]
        out["addr"] = socket.inet_ntop(socket.AF_INET, raw[4:8])
    elif family == socket.AF_INET6 and len(raw) >= 24:
        out["port"] = struct.unpack_from(">H", raw, 2)[0]
        out["flowinfo"] = struct.unpack_from(">I", raw, 4)[0]
        out["addr"] = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        if len(raw) >= 28:
            out["scope_id"] = struct.unpack_from("<I", raw, 24)[0]
    elif family == socket.AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":  # abstract: the name is every byte of addrlen, NULs included
            out["abstract"] = True
            out["path"] = path[1:].decode("utf-8", "surrogateescape")
        else:
            out["path"] = path.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    elif family == socket.AF_NETLINK and len(raw) >= 12:
        out["nl_pid"], out["nl_groups"] = struct.unpack_from("<II", raw, 4)
    else:
        out["raw"] = raw[2:].hex()
    return out


def sockaddr_str(sa: dict) -> str:
    """Short form for the console (AF_UNIX path shown escaped by the caller)."""
    fam = sa.get("family")
    if fam == "AF_INET":
        return f"{sa['addr']}:{sa['port']}"
    if fam == "AF_INET6":
        return f"[{sa['addr']}]:{sa['port']}"
    return str(fam)
