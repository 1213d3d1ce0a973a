"""Keeping a results store's results safe: whole copies of a live store, and salvage.

SQLite's WAL mode, which lets many workers share one store, needs file locks and shared memory
that work across processes; on network filesystems (NFS) they may not. Keep the live store on a
local disk and let ``coqat sweep run --backup PATH`` keep a whole copy where the results must
end up (a shared folder, a folder a job's files are collected from):

* :func:`backup_store`: a consistent copy of a live store (SQLite's online backup, which reads
  through the writers' locks), written beside the destination and renamed over it, so the
  destination is always a whole store;
* :class:`PeriodicBackup`: that copy every ``every`` seconds in a background thread, and once
  more on exit;
* :func:`salvage_store`: every row SQLite can still read from a damaged store, copied table by
  table into a new one (what ``sqlite3 .recover`` does, for when it is not at hand or fails).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from coqat.sweep.store import Store, StoreError


def backup_store(src: str | Path, dest: str | Path) -> Path:
    """A consistent copy of the store ``src`` at ``dest`` (``dest`` + ``.tmp`` written, then
    renamed over ``dest``; the copy has no WAL beside it)."""
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise StoreError(f"{src}: no such results store")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    a = Store(src, readonly=True)  # registered: no header read of this file drops its locks
    b = sqlite3.connect(str(tmp))
    try:
        a.db.raw.backup(b)
        b.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{src}: cannot copy the results store ({e})") from None
    finally:
        b.close()
        a.close()
    os.replace(tmp, dest)
    return dest


class PeriodicBackup:
    """``with PeriodicBackup(store, dest, every=60):`` -- :func:`backup_store` every ``every``
    seconds while the block runs and once at its end. A failed copy is reported on stderr and
    retried at the next tick; it never stops the sweep."""

    def __init__(self, src: str | Path, dest: str | Path, every: float = 60.0):
        if not every > 0:
            raise ValueError(f"every must be > 0 seconds, got {every}")
        self.src, self.dest, self.every = Path(src), Path(dest), float(every)
        self.copies = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _copy(self) -> None:
        import sys

        if not self.src.is_file():
            return
        try:
            backup_store(self.src, self.dest)
            self.copies += 1
        except (StoreError, OSError) as e:
            print(f"backup of {self.src} to {self.dest} failed: {e}", file=sys.stderr)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._copy()

    def __enter__(self) -> PeriodicBackup:
        self._thread = threading.Thread(target=self._loop, name="coqat-backup", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._copy()


def _tables(db: sqlite3.Connection) -> list[tuple[str, str]]:
    return db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY rowid").fetchall()


def salvage_store(src: str | Path, dest: str | Path) -> dict[str, dict[str, int]]:
    """Copy every readable row of the (damaged) store ``src`` into a new store at ``dest``:
    the schema from ``src``, then each table row by row in rowid order (a row on a damaged
    page is skipped), then its indexes. Returns per table the rows ``copied`` and the rowids
    that could not be read (``unreadable``; rowids of deleted rows are no rows and count
    nowhere). ``dest`` must not exist."""
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise StoreError(f"{src}: no such results store")
    if dest.exists():
        raise StoreError(f"{dest}: exists; salvage writes a new store")
    a = sqlite3.connect(f"file:{src.resolve()}?mode=ro", uri=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    b = sqlite3.connect(str(tmp))
    out: dict[str, dict[str, int]] = {}
    try:
        try:
            tables = _tables(a)
            indexes = a.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND "
                                "sql IS NOT NULL").fetchall()
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"{src}: its schema cannot be read ({e}); nothing to salvage") from None
        for name, sql in tables:
            b.execute(sql)
            q = name.replace('"', '""')
            try:
                top = a.execute(f'SELECT max(rowid) FROM "{q}"').fetchone()[0] or 0
            except sqlite3.DatabaseError:
                top = 0
            copied = unreadable = 0
            for rowid in range(1, top + 1):
                try:
                    row = a.execute(f'SELECT * FROM "{q}" WHERE rowid = ?', (rowid,)).fetchone()
                except sqlite3.DatabaseError:
                    unreadable += 1
                    continue
                if row is None:
                    continue
                marks = ", ".join("?" * len(row))
                b.execute(f'INSERT INTO "{q}" VALUES ({marks})', row)
                copied += 1
            out[name] = {"copied": copied, "unreadable": unreadable}
        for (sql,) in indexes:
            b.execute(sql)
        b.commit()
    finally:
        b.close()
        a.close()
    os.replace(tmp, dest)
    return out

