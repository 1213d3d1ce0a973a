"""Opening results stores: empty files, read-only commands that never write, damaged files,
older stores (the committed reference store)."""

from __future__ import annotations

import hashlib
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import make_store, runs_of

from coqat.cli import main
from coqat.sweep.store import ADDED_COLUMNS, Store, StoreError

REFERENCE = Path(__file__).resolve().parent.parent / "experiments" / "reference" / "results.sqlite"


def _state(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` with the sha256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_empty_file_is_an_error_not_a_store(tmp_path, capsys):
    p = tmp_path / "empty.db"
    p.touch()
    for kw in ({}, {"create": False}, {"readonly": True}):
        with pytest.raises(StoreError, match="empty file"):
            Store(p, **kw)
    assert p.stat().st_size == 0  # nothing was written into it
    assert main(["sweep", "status", "--store", str(p)]) == 2
    assert "coqat: error:" in capsys.readouterr().err and p.stat().st_size == 0
    assert main(["results", "export", "--store", str(p), "--out", str(tmp_path / "x.csv")]) == 2
    assert p.stat().st_size == 0 and not (tmp_path / "x.csv").exists()


def test_read_only_commands_never_write(tmp_path, capsys):
    from coqat.sweep.worker import work

    make_store(tmp_path).close()
    work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None)
    db = tmp_path / "s.db"
    sub = tmp_path / "store"
    sub.mkdir()
    shutil.move(db, sub / "s.db")
    db = sub / "s.db"
    before = _state(sub)
    assert main(["sweep", "status", "--store", str(db), "--json"]) == 0
    assert main(["sweep", "status", "--store", str(db)]) == 0
    assert main(["results", "export", "--store", str(db), "--out", str(tmp_path / "r.csv")]) == 0
    from coqat.sweep.progress import snapshot

    assert snapshot(db)["counts"]["done"] == 8
    with Store(db, readonly=True) as st:
        assert st.counts()["done"] == 8
        with pytest.raises(StoreError, match="read-only"):
            st.reset()
    assert _state(sub) == before  # same bytes, and no -wal/-shm files beside it
    capsys.readouterr()


def test_not_a_store(tmp_path):
    p = tmp_path / "x.db"
    p.write_text("hello, not sqlite\n")
    with pytest.raises(StoreError, match="not an SQLite file"):
        Store(p)
    q = tmp_path / "blank.db"
    sqlite3.connect(q).execute("PRAGMA user_version = 1").connection.close()  # tables: none
    with pytest.raises(StoreError, match="no tables"):
        Store(q, readonly=True)
    with pytest.raises(StoreError, match="a folder"):
        Store(tmp_path)


def test_damaged_store_is_a_clear_error(tmp_path, capsys):
    st = make_store(tmp_path)
    for i in range(10):  # enough rows for pages to damage
        st.register(runs_of(), "t", tmp_path / "root", version=f"v{i}")
    st.close()
    p = tmp_path / "s.db"
    b = bytearray(p.read_bytes())
    rnd = random.Random(0)
    for off in range(4096 * 3, len(b) - 4096, 4096 * 2):
        for j in range(100, 4000, 7):
            b[off + j] = rnd.randrange(256)
    p.write_bytes(bytes(b))
    with pytest.raises(StoreError, match="malformed") as e:
        with Store(p, readonly=True) as st:
            st.rows()
    assert str(p) in str(e.value) and "coqat results salvage" in str(e.value)
    assert main(["sweep", "status", "--store", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("coqat: error:") and "Traceback" not in err
    assert main(["results", "export", "--store", str(p), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "the file is damaged" in err and "Traceback" not in err
    # salvage: every readable row into a new, whole store; the damaged file only read
    before = p.read_bytes()
    out = tmp_path / "repaired.db"
    assert main(["results", "salvage", str(p), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "runs:" in said and "integrity: ok" in said and p.read_bytes() == before
    with Store(out, readonly=True) as st:
        n = len(st.rows())
    assert 0 < n < 10 * len(runs_of()) + len(runs_of())  # some rows, not all of them
    assert main(["results", "salvage", str(p), "--out", str(out)]) == 2  # never overwrites


def test_reference_store_opens_read_only_and_gains_columns_when_written(tmp_path):
    """The committed store (schema version 1, no progress column) opens read-only untouched;
    a writable open adds the new columns in place and keeps every row."""
    ref = tmp_path / "ref" / "results.sqlite"
    ref.parent.mkdir()
    shutil.copy(REFERENCE, ref)
    before = _state(ref.parent)
    with Store(ref, readonly=True) as st:
        counts = st.counts()
        recs = st.to_records()
    assert counts["done"] > 100 and len(recs) == counts["done"]
    assert _state(ref.parent) == before
    with Store(ref) as st:
        for table, cols in ADDED_COLUMNS.items():
            have = {r["name"] for r in st.db.execute(f"PRAGMA table_info({table})").fetchall()}
            assert set(cols) <= have
        assert st.counts() == counts
        assert [r["key"] for r in st.to_records()] == [r["key"] for r in recs]
        assert st.integrity_check() == "ok"
    with Store(ref, readonly=True) as st:  # and it still reads as before
        assert st.counts() == counts
