"""The embedded SQLite state store: CRUD, compare-and-swap transactions, durability under kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from homeplane.store import SQLiteStore, Txn


def test_put_get_list_delete(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "state.db")
    r1 = s.put("lbipam/a", b"10.0.0.1")
    r2 = s.put("lbipam/b", b"10.0.0.2")
    s.put("lbipam%/x", b"literal percent")
    assert r2 > r1
    assert s.get("lbipam/a").value == b"10.0.0.1"
    assert [e.key for e in s.list("lbipam/")] == ["lbipam/a", "lbipam/b"]
    assert s.delete("lbipam/a") and not s.delete("lbipam/a")
    assert s.get("lbipam/a") is None
    s.close()


def test_transaction_compare_and_swap(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "state.db")
    assert s.commit(Txn(compares=[("ip/1", 0)], puts=[("ip/1", b"svc-a")]))  # create if absent
    assert not s.commit(Txn(compares=[("ip/1", 0)], puts=[("ip/1", b"svc-b")]))  # lost the race
    assert s.get("ip/1").value == b"svc-a"
    rev = s.get("ip/1").mod_revision
    assert s.commit(Txn(compares=[("ip/1", rev)], puts=[("ip/2", b"x")], deletes=["ip/1"]))
    assert s.get("ip/1") is None and s.get("ip/2").value == b"x"


def test_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    progress = tmp_path / "progress"
    writer = f"""
import os
from homeplane.store import SQLiteStore
s = SQLiteStore({str(db)!r})
i = 0
while True:
    s.put("counter", str(i).encode())
    s.put(f"item/{{i:06d}}", b"x" * 100)
    # report only after both writes returned: they are committed (rename: never a torn file)
    with open({str(progress)!r} + ".tmp", "w") as f:
        f.write(str(i))
    os.replace({str(progress)!r} + ".tmp", {str(progress)!r})
    i += 1
"""
    proc = subprocess.Popen([sys.executable, "-c", writer])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if progress.exists() and int(progress.read_text()) >= 200:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acknowledged = int(progress.read_text())
    s = SQLiteStore(db)
    counter = int(s.get("counter").value)
    assert counter >= acknowledged  # every acknowledged write survived
    items = s.list("item/")
    # items are exactly 0..n with no gap and no torn entry
    assert [e.key for e in items] == [f"item/{i:06d}" for i in range(len(items))]
    assert all(e.value == b"x" * 100 for e in items)
    # "counter" is written before "item/{counter}": a kill between the two leaves one item fewer
    assert len(items) in (counter, counter + 1)
    s.close()
