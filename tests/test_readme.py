"""The README's tour, run as written: every command of its ``sh`` blocks, against the bundled
example, and the lines its ``text`` blocks show found in what those commands printed.

A line ending in ``&`` runs in the background until its block ends (a ``homeplane run`` is
waited for by the block's own ``curl --retry … /readyz``); every other line must exit 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"


def tour_blocks() -> list[tuple[list[str], list[str]]]:
    """(commands, lines shown after them) for each sh block of the tour."""
    text = README.read_text()
    start = text.index("## A short tour")
    end = text.index("\n### ", start)
    fences = re.findall(r"```(sh|text)\n(.*?)```", text[start:end], re.S)
    blocks: list[tuple[list[str], list[str]]] = []
    for lang, body in fences:
        lines = [ln.rstrip() for ln in body.splitlines() if ln.strip()]
        if lang == "sh":
            commands = [re.sub(r"\s{2,}#.*$", "", ln) for ln in lines if not ln.lstrip().startswith("#")]
            blocks.append((commands, []))
        elif blocks:
            blocks[-1][1].extend(lines)
    return blocks


def _normal(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text)


@pytest.mark.parametrize("index", range(len(tour_blocks())))
def test_readme_tour_block(index: int, tmp_path: Path) -> None:
    commands, shown = tour_blocks()[index]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "XDG_STATE_HOME": str(tmp_path / "state"), "NO_COLOR": "1"}
    background: list[subprocess.Popen[str]] = []
    output: list[str] = []
    try:
        for cmd in commands:
            if cmd.endswith("&"):
                background.append(subprocess.Popen(["bash", "-c", cmd[:-1]], cwd=REPO, env=env, text=True,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True))
                continue
            r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{cmd}\nexit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            output.append(r.stdout)
        for p in background:
            assert p.poll() is None, f"a background command of the block stopped: {p.args}\n{p.stderr.read() if p.stderr else ''}"
    finally:
        for p in background:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    printed = {_normal(ln.strip()) for out in output for ln in out.splitlines()}
    missing = [ln for ln in shown if _normal(ln.strip()) not in printed]
    assert not missing, f"the README shows lines these commands did not print: {missing}\n--- printed:\n" + "\n".join(output)[-3000:]
