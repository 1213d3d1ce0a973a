"""A process's second connection to a store must not drop the first one's file lock.

POSIX locks belong to the process: closing any descriptor of the store file releases all of
them. If opening a second Store (a worker's heartbeat thread does) read the file's header with
open()/close(), the first connection lost its lock without knowing, and another process closing
its connection took itself for the last one and reset the WAL under the live writers: a
damaged store (call 2026-11-30-c9 of experiments/reference)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from coqat.sweep.store import Store


def _open_and_close_elsewhere(path: Path) -> None:
    code = f"from coqat.sweep.store import Store; Store({str(path)!r}, create=False).close()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_second_connection_keeps_the_first_ones_lock(tmp_path):
    p = tmp_path / "s.db"
    a = Store(p)
    a.meta("root")  # a read: the connection now holds its shared lock on the file
    b = Store(p, create=False)  # e.g. the heartbeat thread's own connection
    c = Store(p, readonly=True)  # e.g. a progress snapshot
    wal = Path(f"{p}-wal")
    assert wal.exists()
    _open_and_close_elsewhere(p)
    # the other process saw live connections here: it left the WAL alone
    assert wal.exists()
    a.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('x', '1')")
    for st in (c, b, a):
        st.close()
    with Store(p, readonly=True) as st:
        assert st.integrity_check() == "ok" and st.meta("x") == "1"


def test_header_checks_still_run_when_no_connection_is_live(tmp_path):
    import pytest

    from coqat.sweep.store import StoreError

    p = tmp_path / "junk.db"
    p.write_bytes(b"not sqlite at all" * 10)
    with pytest.raises(StoreError, match="not an SQLite file"):
        Store(p)
    from coqat.sweep import store

    q = tmp_path / "s.db"
    a = Store(q)
    b = Store(q, create=False)
    assert store._LIVE[store._live_key(q)] == 2
    for st in (a, b, b):  # closing twice is harmless
        st.close()
    assert store._live_key(q) not in store._LIVE  # nothing stays registered
