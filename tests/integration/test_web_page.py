"""The status page in a real headless Chromium (Debian's), driven over the Chrome DevTools
protocol: the page loads, shows the running instance's gateways, routes, Services, published
records and components, and new flows appear without a reload. Values from clients are text,
never markup."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from websockets.sync.client import connect

from tests.gateway.backends import Backend
from tests.integration.test_observe import Running
from tests.integration.test_run import free_port, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by scripts/install-test-deps.sh")


class Browser:
    """One headless Chromium and one page, over CDP."""

    def __init__(self, tmp: Path):
        port = free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={tmp / 'profile'}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pages = wait_for(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"],
                         timeout=60, what="chromium's DevTools endpoint")
        self._ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.ws = self._ws.__enter__()
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(r["exceptionDetails"])
        return r["result"].get("value")

    def table(self, table_id: str) -> list[list[str]]:
        return self.evaluate(f"[...document.querySelectorAll('#{table_id} tbody tr')].map(r => [...r.cells].map(c => c.textContent))")

    def close(self) -> None:
        self._ws.__exit__(None, None, None)
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Browser]]:
    backend = Backend("a")
    tmp = tmp_path_factory.mktemp("web")
    r = Running(tmp, backend.port)
    b = Browser(tmp)
    try:
        yield r, b
    finally:
        b.close()
        r.close()
        backend.close()


def test_the_page_shows_the_running_instance(setup: tuple[Running, Browser]) -> None:
    r, b = setup
    b.call("Page.enable")
    b.call("Page.navigate", url=f"http://{r.admin}/ui")
    wait_for(lambda: b.evaluate("document.querySelectorAll('#gateways tbody tr').length") >= 1, what="the gateways table")
    gateways = b.table("gateways")
    assert gateways[0][:6] == ["network/gw", "", "http", "80", "HTTP", "*"] and gateways[0][7] == "ok"
    assert [row[0] for row in b.table("routes")] == ["apps/r"] and b.table("routes")[0][3] == "Accepted"
    assert ["apps/a", "ClusterIP"] == b.table("services")[0][:2]
    components = {row[0]: row[1] for row in b.table("components")}
    assert components["Gateways"] == "OK" and components["DNS"] == "OK" and components["Tunnel"] == "disabled"
    assert b.evaluate("document.getElementById('overall').textContent") in ("OK", "warning")


def test_new_flows_appear_live_and_stay_text(setup: tuple[Running, Browser]) -> None:
    r, b = setup
    b.call("Page.navigate", url=f"http://{r.admin}/ui")
    wait_for(lambda: b.evaluate("document.querySelectorAll('#components tbody tr').length") > 0, what="the page")
    time.sleep(1)  # the page follows the flows from here on
    marker = "/live-<img src=x onerror=window.pwned=1>"
    httpx.get(f"http://127.0.0.1:{r.http}{marker}", headers={"host": "app.home.test"})
    rows = wait_for(lambda: [row for row in b.table("flows") if "live-" in row[5]], timeout=30, what="the new flow on the page")
    assert rows[0][4] == "FORWARDED" and rows[0][3] == "http" and rows[0][2].startswith("apps/a:")
    assert "<img src=x onerror=window.pwned=1>" in rows[0][5] or "%3Cimg" in rows[0][5]
    assert b.evaluate("window.pwned === undefined") and b.evaluate("document.querySelectorAll('#flows img').length") == 0
