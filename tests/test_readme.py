"""Every code block of README.md that is meant to run is run here, as written.

Each fenced block needs a language. `text` blocks are samples of output and are not run; a block that
must not run (the test suite itself, a minutes-long benchmark) says why on the line before it:
`<!-- not run: REASON -->`. Everything else runs:
- `sh`: with bash -euo pipefail, the checkout's .venv/bin first on PATH; from the checkout when it uses
  `./` or `.venv/` paths, else from a scratch directory (which has `examples/`);
- `python`: with this Python, from the scratch directory;
- `toml`: a policy, checked with `tracer monitor --check-policy`;
- `json`: parsed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN = ("sh", "python", "toml", "json")
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\n$")


@dataclass
class Block:
    line: int
    lang: str
    code: str
    not_run: str | None

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang or 'no language'})"


def blocks() -> list[Block]:
    text = README.read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[:m.start()]
        marker = NOT_RUN.search(before[-300:])
        found.append(Block(before.count("\n") + 1, m.group(1), m.group(2), marker.group(1) if marker else None))
    return found


def runnable() -> list[Block]:
    return [b for b in blocks() if b.lang in RUN and b.not_run is None]


def test_every_block_is_run_or_says_why() -> None:
    for b in blocks():
        assert b.lang, (f"{b}: a code block without a language: write ```text for an output sample, or a language "
                        f"({', '.join(RUN)}) to have tests/test_readme.py run it")
        assert b.lang in (*RUN, "text"), f"{b}: tests/test_readme.py cannot run ```{b.lang} (use {', '.join(RUN)})"
        assert not (b.lang == "text" and b.not_run), f"{b}: a text block is never run; drop the marker"
    assert len(runnable()) >= 8, [str(b) for b in runnable()]


@pytest.fixture(scope="module")
def scratch() -> Path:
    d = Path(tempfile.mkdtemp(prefix="tracer-readme-"))
    (d / "examples").symlink_to(ROOT / "examples")
    return d


def _env() -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}


def _check(proc: subprocess.CompletedProcess, block: Block) -> None:
    what = f"{block}\n{block.code}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, what
    assert "Traceback" not in proc.stderr, what


@pytest.mark.parametrize("block", [b for b in runnable() if b.lang in ("json", "toml")], ids=str)
def test_data_block(block: Block, scratch: Path) -> None:
    if block.lang == "json":
        json.loads(block.code)
        return
    policy = scratch / f"policy-{block.line}.toml"
    policy.write_text(block.code)
    proc = subprocess.run([sys.executable, "-m", "tracer", "monitor", "--check-policy", str(policy)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    _check(proc, block)


@pytest.mark.parametrize("block", [b for b in runnable() if b.lang in ("sh", "python")], ids=str)
def test_command_block(block: Block, scratch: Path, bpf_env) -> None:
    if block.lang == "python":
        argv = [sys.executable, "-c", block.code]
        cwd = scratch
    else:
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
        cwd = ROOT if re.search(r"(^|\s)(\./|\.venv/)", block.code) else scratch
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, env=_env(),
                          stdin=subprocess.DEVNULL)
    _check(proc, block)
    if block.lang == "python":  # a second run works too (record=..., force=True)
        _check(subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, env=_env(),
                              stdin=subprocess.DEVNULL), block)
