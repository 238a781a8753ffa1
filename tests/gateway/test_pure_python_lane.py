"""The compiled lanes (HTTP/1.1 fast lane, its TLS and HTTP/2) are optional: without a compiler
homeplane serves every request in Python. The gateway tests that do not test a compiled lane
itself (modules below, tests marked ``compiled``) run again with them turned off
(HOMEPLANE_FASTLANE=0), in a process of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
COMPILED_ONLY = {
    "test_fastlane.py",  # compares the two lanes, or the C lane's own behaviour
    "test_fastlane_boundary.py",
    "test_http2_lanes.py",  # compares nghttp2's lane with the h2 library's
    Path(__file__).name,
}


def test_the_gateway_tests_pass_with_the_compiled_lanes_off() -> None:
    modules = sorted(str(p) for p in HERE.glob("test_*.py") if p.name not in COMPILED_ONLY)
    env = {**os.environ, "HOMEPLANE_FASTLANE": "0"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-x", "-p", "no:cacheprovider", "-m", "not compiled", *modules],
        cwd=HERE.parent.parent, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert " passed" in last and int(last.split()[0]) > 200, last  # the tests did run
