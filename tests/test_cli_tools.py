"""`tracer list syscalls/groups`, shell completion (through bash itself), `tracer man` (through groff) and
`--debug` (the program cache's log), as users run them: `python -m tracer` in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import pytest

from tracer import syscalls
from tracer.cli import cli
from tracer.kenv import tracefs_root

ROOT = Path(__file__).resolve().parent.parent
TRACER = [sys.executable, "-m", "tracer"]
NOBODY = 65534


def tracer(*args: str, env: dict | None = None, user: int | None = None) -> subprocess.CompletedProcess:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    return subprocess.run([*prefix, *TRACER, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def kernel_names(bpf_env) -> list[str]:
    """Syscalls with enter and exit tracepoints, read from tracefs here (not through tracer)."""
    base = tracefs_root() / "events" / "syscalls"
    return sorted(d.name[len("sys_enter_"):] for d in base.glob("sys_enter_*")
                  if (base / f"sys_exit_{d.name[len('sys_enter_'):]}").is_dir())


def test_list_syscalls_glob_and_one_line(kernel_names: list[str]) -> None:
    proc = tracer("list", "syscalls", "openat*")
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert [line.split("(")[0] for line in lines] == [n for n in kernel_names if n.startswith("openat")]
    assert ("openat2(int dfd, const char * filename, struct open_how * how, size_t usize)  nr 437  %file  "
            "reads filename, how") in lines


def test_list_syscalls_group_json(kernel_names: list[str]) -> None:
    proc = tracer("list", "syscalls", "%net", "--json")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["name"] for r in rows] == sorted(n for n in kernel_names if n in syscalls.GROUPS["net"])
    (connect,) = [r for r in rows if r["name"] == "connect"]
    assert connect["groups"] == ["%net"] and connect["reads"] == ["uservaddr"] and connect["returns"] is True
    assert [a["name"] for a in connect["args"]] == ["fd", "uservaddr", "addrlen"]
    everything = tracer("list", "syscalls", "--json")
    exit_group = [json.loads(x) for x in everything.stdout.splitlines() if '"exit_group"' in x]
    assert exit_group[0]["returns"] is False and exit_group[0]["groups"] == ["%process"]


def test_list_groups_and_unknown(kernel_names: list[str]) -> None:
    lines = tracer("list", "groups").stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["%file", "%net", "%process"]
    net = lines[1].split(": ", 1)[1].split()
    assert lines[1].startswith(f"%net ({len(net)}): ") and "connect" in net
    bad = tracer("list", "syscalls", "no_such_call")
    assert bad.returncode == 2 and bad.stderr == "tracer: no syscall tracepoint matches 'no_such_call'\n"


def complete(words: str, user: int | None = None) -> list[str]:
    """What bash offers after `words` (the last word being completed), through the script that
    `tracer completion bash` prints."""
    script = tracer("completion", "bash").stdout
    exe = shutil.which("tracer", path=str(Path(sys.executable).parent)) or "tracer"
    bash = (f'{script}\nCOMP_WORDS=({exe} {words}); COMP_CWORD={len(words.split())}\n'
            f'_tracer_completion {exe}; printf "%s\\n" "${{COMPREPLY[@]}}"')
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    proc = subprocess.run([*prefix, "bash", "-c", bash], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.stderr == "", proc.stderr
    return proc.stdout.split()


def test_completion_of_events_groups_and_options(kernel_names: list[str]) -> None:
    assert complete("trace opena") == [n for n in kernel_names if n.startswith("opena")]
    assert complete("trace %") == ["%file", "%net", "%process"]
    assert complete("record -o x.cap %p") == ["%process"]
    assert complete("trace syscalls:sys_enter_openat") == ["syscalls:sys_enter_openat", "syscalls:sys_enter_openat2"]
    assert "uprobe:" in complete("trace up")
    assert "--read-mode" in complete("trace --re")
    assert complete("list syscalls socketp") == ["socketpair"]


def test_completion_without_tracefs_access(kernel_names: list[str]) -> None:
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                            "-c", "import tracer.cli"], capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:  # where the checkout lives, not a kernel capability
        pytest.skip(f"user {NOBODY} cannot import tracer from this checkout: {probe.stderr[-200:]}")
    assert "openat2" in complete("trace opena", user=NOBODY)  # libseccomp's names


def test_man_page_renders_every_command_and_option(tmp_path: Path) -> None:
    proc = tracer("man")
    assert proc.returncode == 0
    page = proc.stdout
    assert page.startswith(".TH TRACER 1 ")
    ctx = click.Context(cli, info_name="tracer")

    def walk(group: click.Group, path: list[str], ctx: click.Context):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            sub = click.Context(cmd, info_name=name, parent=ctx)
            if isinstance(cmd, click.Group):
                yield from walk(cmd, [*path, name], sub)
            else:
                yield [*path, name], cmd, sub

    for path, cmd, sub in walk(cli, [], ctx):
        assert f".SS tracer {' '.join(path)}\n" in page, path
        for param in cmd.get_params(sub):
            if isinstance(param, click.Option) and param.name != "help":
                for opt in param.opts:
                    assert opt.replace("-", "\\-") in page, (path, opt)
    if shutil.which("groff"):
        out = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page, capture_output=True, text=True)
        assert out.returncode == 0 and out.stderr == "", out.stderr
        text = subprocess.run(["groff", "-man", "-Tascii"], input=page, capture_output=True, text=True).stdout
        plain = re.sub(r".\x08", "", text)
        assert "tracer monitor" in plain and "--output" in plain and "SIGKILL" in plain


def test_debug_shows_program_cache_misses_and_hits(bpf_env) -> None:
    cache = tempfile.mkdtemp(prefix="tracer-debug-cache-")
    try:
        env = {"TRACER_CACHE_DIR": cache}
        cold = tracer("--debug", "trace", "openat2", "--json", "--no-summary", "--", "true", env=env)
        warm = tracer("trace", "openat2", "--json", "--no-summary", "--", "true", env={**env, "TRACER_DEBUG": "1"})
        quiet = tracer("trace", "openat2", "--json", "--no-summary", "--", "true", env=env)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    assert cold.returncode == warm.returncode == quiet.returncode == 0, cold.stderr + warm.stderr
    assert "tracer: debug: tracer.bpfcache: program cache miss: compiling trace.bpf.c (key " in cold.stderr
    assert "tracer: debug: tracer.bpfcache: program cache hit: trace.bpf.c loaded without compiling" in warm.stderr
    assert quiet.stderr == ""


def test_bootstrap_link_installs_link_man_page_and_completion(tmp_path: Path) -> None:
    """./bootstrap --link, pointed at a scratch directory (it is idempotent: here it only checks)."""
    if os.geteuid() != 0:
        pytest.skip("./bootstrap runs as root")
    env = {"TRACER_BIN_LINK": str(tmp_path / "bin" / "tracer"), "TRACER_MAN_DIR": str(tmp_path / "man1"),
           "TRACER_COMPLETION_DIR": str(tmp_path / "completion")}
    (tmp_path / "bin").mkdir()
    proc = subprocess.run([str(ROOT / "bootstrap"), "--link"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(tmp_path / "bin" / "tracer") == str(ROOT / ".venv" / "bin" / "tracer")
    assert (tmp_path / "man1" / "tracer.1").read_text().startswith(".TH TRACER 1 ")
    assert "_tracer_completion" in (tmp_path / "completion" / "tracer").read_text()
    # A regular file there is somebody else's: left alone, and said so.
    (tmp_path / "bin" / "tracer").unlink()
    (tmp_path / "bin" / "tracer").write_text("mine")
    proc = subprocess.run([str(ROOT / "bootstrap"), "--link"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    assert proc.returncode == 1 and "exists and is not a link: left alone" in proc.stderr
    assert (tmp_path / "bin" / "tracer").read_text() == "mine"
