"""The results store: one SQLite file (stdlib ``sqlite3``, WAL mode) shared by every worker.

Tables (``schema_version`` in ``meta``):

* ``runs``: one row per run key (:func:`coqat.sweep.keys.run_key`): the resolved config, status
  ``pending | running | done | diverged | failed``, the lease (``owner`` = ``host:pid:uuid`` and
  ``lease_until``), attempts, error text, and the numbers the law needs as columns (N variants,
  D_fp, D_qat, bits, f, schedule, seed, size, losses, S values, FLOPs, wall time, device,
  commit) plus the full result JSON. ``trunk`` is the FP trunk the run branches from (NULL: it
  trains alone); ``cluster`` is its trunk key even when it trains alone (runs with one seed,
  model and data order are correlated), used by the cluster bootstrap.
* ``trunks`` / ``trunk_steps``: FP trunks with their own lease, and the branch checkpoints that
  are ready. ``sweep_runs``: which sweep(s) registered which runs.

Claim protocol: :meth:`Store.claim` runs in one ``BEGIN IMMEDIATE`` transaction (a write lock
taken up front, so two workers cannot both see a row as free). Ready work is a trunk that has
pending runs waiting for a branch checkpoint, or a run that is ready (no trunk, its branch
checkpoint is ready, or its trunk failed -- then it trains alone, which gives the same result);
a run branches from its trunk's checkpoint as soon as that checkpoint is ready, while the trunk
trains on. The longest piece goes first (a trunk with the runs waiting for it, a run by its own
part), so concurrent workers start the long work at once; with a time budget, a piece that would
not end in time stays pending. A ``running`` row counts as free when its lease expired or its
owner is a dead process on this host. Workers renew their lease with :meth:`heartbeat`. Attempts
count claims whose worker died without a new checkpoint in the run's or trunk's folder (a
preempted worker that checkpointed does not use up attempts; SIGTERM gives the claim back
uncounted). A ``done`` or ``diverged`` run is never handed out again; :meth:`complete` on it is a
no-op. Every write is one transaction, so a kill -9 at any point leaves a consistent database
(SQLite's journal rolls back a torn transaction).

Opening: an empty (0-byte) file is an error, not an empty store; ``readonly=True`` never writes
(status, export and report open stores so); any SQLite error (a damaged file) is a
:class:`StoreError` that names the store. Columns added after schema version 1
(:data:`ADDED_COLUMNS`) are added by the first writable open; older coqat versions ignore them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from coqat.errors import CoqatError

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "diverged", "failed")
FINISHED = ("done", "diverged", "failed")

# result-record fields stored as columns: name -> SQL type
RESULT_COLUMNS: dict[str, str] = {
    "size": "TEXT",
    "N": "INTEGER",
    "N_nonemb": "INTEGER",
    "N_embed": "INTEGER",
    "N_linear": "INTEGER",
    "bits": "REAL",
    "embed_bits": "REAL",
    "D_total": "INTEGER",
    "D_fp": "INTEGER",
    "D_qat": "INTEGER",
    "f": "REAL",
    "f_requested": "REAL",
    "schedule": "TEXT",
    "seed": "INTEGER",
    "loss": "REAL",
    "loss_fp": "REAL",
    "loss_ptq": "REAL",
    "S_total": "REAL",
    "S_fp": "REAL",
    "S_qat": "REAL",
    "model_bytes": "REAL",
    "flops_fp": "REAL",
    "flops_qat": "REAL",
    "flops": "REAL",
    "wall_fp": "REAL",
    "wall_qat": "REAL",
    "wall": "REAL",
    "tokens_per_s": "REAL",
    "device": "TEXT",
    "commit": "TEXT",
}
REAL_COLUMNS = {k for k, t in RESULT_COLUMNS.items() if t == "REAL"}

# columns added after schema version 1 was released: a writable open adds them to an older
# store (additive; coqat versions that do not know them ignore them). ``progress``: a marker of
# the newest checkpoint in the run's or trunk's folder when its attempts were last counted.
ADDED_COLUMNS: dict[str, dict[str, str]] = {
    "runs": {"progress": "TEXT"},
    "trunks": {"progress": "TEXT"},
}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    code_version TEXT NOT NULL,
    data_hash TEXT NOT NULL,
    trunk TEXT,
    branch_step INTEGER NOT NULL DEFAULT 0,
    cluster TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN {STATUSES!r}),
    owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    {", ".join(f'"{k}" {t}' for k, t in RESULT_COLUMNS.items())},
    result TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, code_version);
CREATE INDEX IF NOT EXISTS runs_trunk ON runs (trunk, branch_step);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (sweep, key)
);
CREATE TABLE IF NOT EXISTS trunks (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    code_version TEXT NOT NULL,
    trunk_dir TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed')),
    owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created REAL NOT NULL,
    updated REAL
);
CREATE TABLE IF NOT EXISTS trunk_steps (
    trunk TEXT NOT NULL, step INTEGER NOT NULL, path TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (trunk, step)
);
"""



#: which sweeps' runs: one sweep name, several, or None for every run of the store
SweepSelection = str | Iterable[str] | None


def sweep_filter(sweep: SweepSelection) -> tuple[str, tuple[str, ...]]:
    """SQL condition on a run ``r`` (and its arguments) that keeps the runs registered by
    ``sweep``: one sweep name, several, or None / empty for every run."""
    names = (sweep,) if isinstance(sweep, str) else tuple(sweep or ())
    if not names:
        return "", ()
    qs = ",".join("?" * len(names))
    return f"r.key IN (SELECT key FROM sweep_runs WHERE sweep IN ({qs}))", names

class StoreError(CoqatError):
    """The results store cannot be used (wrong schema version, not a store, ...)."""


def new_owner(tag: str | None = None) -> str:
    """Owner id ``host:pid:tag`` (tag: a fresh uuid unless given)."""
    return f"{socket.gethostname()}:{os.getpid()}:{tag or uuid.uuid4().hex[:12]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` is a process on this host that no longer runs."""
    if not owner:
        return True
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    return not _pid_alive(pid)


def tokens_per_step(row: Any) -> int:
    """Tokens per optimizer step of a runs row (from its config)."""
    cfg = json.loads(row["config"])
    return int(cfg["optim"]["batch_size"]) * int(cfg["model"]["seq_len"])


def own_tokens(row: Any, branched: bool) -> int:
    """Tokens a run trains itself: after its branch step when it branches from its trunk's
    checkpoint, else all of them."""
    total = row["D_total"]
    if total is None:
        total = int(json.loads(row["config"])["tokens"])
    if branched and row["trunk"]:
        return int(total) - int(row["branch_step"]) * tokens_per_step(row)
    return int(total)


def _flops_seconds(row: Any, tokens: int) -> float:
    """Default cost: training FLOPs, 6 N per token."""
    return 6.0 * float(row["N"] or 1) * tokens


def _num(v: Any) -> Any:
    """SQLite has no NaN (it stores NULL); keep None for missing, floats otherwise."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v


class Claim(dict):
    """What a worker got: ``kind`` ('run' | 'trunk'), ``key``, ``config`` (dict), ``est_s``
    (the piece's estimate, in the units of the claim's cost function), and for runs
    ``run_dir``, ``trunk``, ``branch_step``, ``start_from`` (a ready trunk checkpoint or None);
    for trunks ``trunk_dir``."""

    def __getattr__(self, k: str) -> Any:
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


class _Cursor:
    """A cursor whose SQLite errors become :class:`StoreError` (corruption shows up lazily)."""

    def __init__(self, cur: sqlite3.Cursor, err):
        self._cur, self._err = cur, err

    def fetchone(self):
        try:
            return self._cur.fetchone()
        except sqlite3.DatabaseError as e:
            raise self._err(e) from None

    def fetchall(self):
        try:
            return self._cur.fetchall()
        except sqlite3.DatabaseError as e:
            raise self._err(e) from None

    def __iter__(self):
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


class _Connection:
    """``sqlite3.Connection.execute`` with every SQLite error raised as a :class:`StoreError`
    that names the store (a corrupted page, a locked or unreadable file): no traceback."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self.raw, self.path = db, path

    def _err(self, e: sqlite3.DatabaseError) -> StoreError:
        msg = str(e)
        hint = ""
        if any(w in msg for w in ("malformed", "not a database", "Could not decode")):
            hint = (
                f"; the file is damaged: keep a copy and run `coqat results salvage "
                f"{self.path} --out repaired.sqlite` (run folders keep every finished run's "
                "result.json); `coqat sweep run --backup PATH` keeps a whole copy of a live store"
            )
        return StoreError(f"{self.path}: {msg}{hint}")

    def execute(self, sql: str, args: Any = ()) -> _Cursor:
        try:
            return _Cursor(self.raw.execute(sql, args), self._err)
        except sqlite3.DatabaseError as e:
            raise self._err(e) from None

    def close(self) -> None:
        self.raw.close()


# Live SQLite connections of this process, by store file. POSIX file locks belong to the
# process, and closing *any* descriptor of a file drops all of them: reading a store's header
# with open()/close() while this process has a connection to it silently released that
# connection's lock, so another process closing its own connection took itself for the last
# one and reset the WAL under the live writers (the store damaged in call 2026-11-30-c9 of
# experiments/reference; tests/test_store_locks.py). The header is read only while no
# connection is live.
_LIVE: dict[str, int] = {}
_LIVE_LOCK = threading.Lock()


def _live_key(path: Path) -> str:
    return os.path.realpath(path)


def _sqlite_header(path: Path) -> bytes | None:
    """The file's first 100 bytes, or None while this process holds a connection to it (then
    reading it would drop that connection's locks; the caller holds ``_LIVE_LOCK``)."""
    if _LIVE.get(_live_key(path)):
        return None
    with open(path, "rb") as fh:
        return fh.read(100)


class Store:
    """A results store at ``path``.

    ``create``: make a new store when ``path`` does not exist (else StoreError). ``readonly``:
    open for reading only (``sweep status``, ``results export``, the report): nothing is ever
    written to the file, not even a schema. An empty (0-byte) file is an error, never an empty
    store.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        readonly: bool = False,
        timeout: float = 60.0,
    ):
        self.path = Path(path)
        self.readonly = readonly
        exists = self.path.exists()
        if not exists and (readonly or not create):
            raise StoreError(f"{self.path}: no such results store")
        with _LIVE_LOCK:
            head = None
            if exists:
                if self.path.is_dir():
                    raise StoreError(
                        f"{self.path}: a folder, not a results store (an SQLite file)")
                if self.path.stat().st_size == 0:
                    raise StoreError(
                        f"{self.path}: an empty file (0 bytes), not a results store; delete it "
                        "to start a new store there"
                    )
                head = _sqlite_header(self.path)
                if head is not None and not head.startswith(b"SQLite format 3\x00"):
                    raise StoreError(
                        f"{self.path}: not a coqat results store (not an SQLite file)")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if readonly:
                    raw = self._connect_readonly(timeout, head)
                else:
                    raw = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
            except sqlite3.DatabaseError as e:
                raise StoreError(f"{self.path}: cannot open the results store ({e})") from None
            self._key = _live_key(self.path)
            _LIVE[self._key] = _LIVE.get(self._key, 0) + 1
        raw.row_factory = sqlite3.Row
        self.db = _Connection(raw, self.path)
        self.db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        if not readonly:
            mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a filesystem without shared memory
                self.db.execute("PRAGMA journal_mode = DELETE")
            self.db.execute("PRAGMA synchronous = NORMAL")
        try:
            self._init_schema()
        except BaseException:
            self.close()
            raise

    def _connect_readonly(self, timeout: float, head: bytes | None) -> sqlite3.Connection:
        """Read-only connection. A WAL store with no ``-wal`` file has nothing outside the
        main file: it is opened immutable, so SQLite creates no ``-wal``/``-shm`` files beside
        it (a committed store stays as it is); otherwise the live WAL is read as usual (also
        when ``head`` is None: this process has the store open already)."""
        from urllib.parse import quote

        wal = head is not None and len(head) > 19 and head[18] == 2 and head[19] == 2
        immutable = wal and not Path(f"{self.path}-wal").exists()
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro" + ("&immutable=1" if immutable
                                                                  else "")
        return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)

    # ------------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def tx(self) -> Iterator[_Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``; rollback on error)."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.raw.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _init_schema(self) -> None:
        try:  # the common case, a current store: read only, no write lock
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is not None and int(row[0]) == SCHEMA_VERSION:
                if not self.readonly:
                    self._add_columns()
                return
        except ValueError:
            pass
        except StoreError as e:
            if "no such table" not in str(e):
                raise
        if self.readonly:
            self._check_schema(self.db)
            return
        with self.tx() as db:
            if not self._check_schema(db):
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
        self._add_columns()

    def _check_schema(self, db: _Connection) -> bool:
        """True for a store of this schema version; False for an empty SQLite file (no
        tables); StoreError for anything else."""
        has_meta = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if has_meta:
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            found = int(row[0]) if row else None
            if found != SCHEMA_VERSION:
                from coqat import __version__

                raise StoreError(
                    f"{self.path}: results store schema version {found}; this coqat "
                    f"({__version__}) reads schema version {SCHEMA_VERSION}. Use the coqat "
                    f"version that wrote it (or export it there) or start a new store."
                )
            return True
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(f"{self.path}: an SQLite file that is not a coqat results store")
        if self.readonly:
            raise StoreError(f"{self.path}: an SQLite file with no tables, not a results store")
        return False

    def _add_columns(self) -> None:
        """Add the columns newer coqat versions use to an older store of the same schema
        version (additive: older coqat versions ignore them), in one transaction."""
        have = {
            t: {r["name"] for r in self.db.execute(f"PRAGMA table_info({t})").fetchall()}
            for t in ADDED_COLUMNS
        }
        if all(set(cols) <= have[t] for t, cols in ADDED_COLUMNS.items()):
            return
        with self.tx() as db:
            for t, cols in ADDED_COLUMNS.items():
                now = {r["name"] for r in db.execute(f"PRAGMA table_info({t})").fetchall()}
                for c, typ in cols.items():
                    if c not in now:
                        db.execute(f'ALTER TABLE {t} ADD COLUMN "{c}" {typ}')

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def root(self) -> Path | None:
        """The run root recorded at registration (run and trunk folders are relative to it)."""
        r = self.meta("root")
        return Path(r) if r else None

    def close(self) -> None:
        with _LIVE_LOCK:
            if getattr(self, "_key", None) is None:
                return
            self.db.close()
            n = _LIVE.get(self._key, 0) - 1
            if n > 0:
                _LIVE[self._key] = n
            else:
                _LIVE.pop(self._key, None)
            self._key = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def integrity_check(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

    # ------------------------------------------------------------------------ registration
    def register(
        self,
        runs: Iterable[Any],
        sweep: str,
        root_dir: str | Path | None = None,
        *,
        version: str | None = None,
        share: bool = True,
    ) -> dict[str, int]:
        """Add runs (RunConfigs) as pending; idempotent (known keys are left as they are).

        Run and trunk folders are recorded relative to the run root (``root_dir``, remembered in
        ``meta``), so a store and its root can move together.

        Returns ``{"new": n, "known": n, "keys": [...]}``. Trunks are assigned with
        :func:`coqat.sweep.tree.plan_sweep`; a run already in the store keeps its trunk unless it
        is still pending (then it may join a trunk that newly registered runs created).
        """
        from dataclasses import replace as dc_replace

        from coqat.config import to_dict
        from coqat.model.config import param_counts
        from coqat.sweep.keys import code_version, data_hash, run_key, trunk_key
        from coqat.sweep.tree import plan_sweep
        from coqat.train.phases import plan_phases

        version = code_version() if version is None else version
        runs = list(runs)
        # absolute data paths, so workers started elsewhere find the data (keys ignore the path)
        runs = [
            dc_replace(r, data=dc_replace(r.data, path=os.path.abspath(r.data.path)))
            if r.data.path
            else r
            for r in runs
        ]
        dh = {r.data.path: data_hash(r.data.path) for r in runs}
        plan = plan_sweep(runs, share=share, version=version, dhash=None)
        now = time.time()
        new = known = 0
        keys = []
        with self.tx() as db:
            if root_dir is not None:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('root', ?)",
                    (str(Path(root_dir).resolve()),),
                )
            for pr in plan.runs:
                cfg = pr.cfg
                d = dh[cfg.data.path]
                key = run_key(cfg, version, d)
                keys.append(key)
                db.execute("INSERT OR IGNORE INTO sweep_runs VALUES (?, ?)", (sweep, key))
                row = db.execute("SELECT status FROM runs WHERE key=?", (key,)).fetchone()
                if pr.trunk:
                    tk = pr.trunk
                    db.execute(
                        "INSERT OR IGNORE INTO trunks (key, config, code_version, trunk_dir, "
                        "created) VALUES (?, ?, ?, ?, ?)",
                        (tk, json.dumps(to_dict(cfg)), version, f"trunks/{tk}", now),
                    )
                if row is not None:
                    known += 1
                    if row["status"] == "pending" and pr.trunk:
                        db.execute(
                            "UPDATE runs SET trunk=?, branch_step=? WHERE key=? AND "
                            "status='pending'",
                            (pr.trunk, pr.branch_step, key),
                        )
                    continue
                new += 1
                plan_ = plan_phases(cfg)
                pc = param_counts(cfg.model)
                bits = cfg.qat.bits
                nb = pc.total * bits / 8
                cols = {
                    "size": cfg.size,
                    "N": pc.total,
                    "N_nonemb": pc.non_embedding,
                    "N_embed": pc.embedding,
                    "N_linear": pc.linear,
                    "bits": bits,
                    "D_total": plan_.tokens,
                    "D_fp": plan_.d_fp,
                    "D_qat": plan_.d_qat,
                    "f": plan_.fraction,
                    "f_requested": cfg.qat.fraction,
                    "schedule": plan_.schedule,
                    "seed": cfg.seed,
                    "S_total": plan_.tokens / nb,
                    "S_fp": plan_.d_fp / nb,
                    "S_qat": plan_.d_qat / nb,
                    "flops": pr.flops_independent,
                }
                names = ", ".join(f'"{k}"' for k in cols)
                db.execute(
                    f"INSERT INTO runs (key, config, code_version, data_hash, trunk, branch_step, "
                    f"cluster, run_dir, created, {names}) VALUES "
                    f"({', '.join('?' * (9 + len(cols)))})",
                    (
                        key,
                        json.dumps(to_dict(cfg)),
                        version,
                        d,
                        pr.trunk,
                        pr.branch_step,
                        trunk_key(cfg, version, d),
                        f"runs/{key}",
                        now,
                        *[_num(v) for v in cols.values()],
                    ),
                )
        return {"new": new, "known": known, "keys": keys}

    # ------------------------------------------------------------------------ claiming
    def _stale_owners(self, db: sqlite3.Connection, now: float) -> list[str]:
        rows = db.execute(
            "SELECT owner, lease_until FROM runs WHERE status='running' "
            "UNION SELECT owner, lease_until FROM trunks WHERE status='running'"
        ).fetchall()
        return sorted(
            {
                r["owner"] or ""
                for r in rows
                if r["lease_until"] is None or r["lease_until"] < now or owner_is_dead(r["owner"])
            }
        )

    def claim(
        self,
        owner: str,
        *,
        version: str | None = None,
        lease_s: float = 120.0,
        max_attempts: int = 5,
        sweep: SweepSelection = None,
        trunks: bool = True,
        seconds: Callable[[Any, int], float] | None = None,
        budget_s: float | None = None,
        progress_of: Callable[[str, str], str] | None = None,
        overhead: Callable[[str, Any], float] | None = None,
    ) -> Claim | None:
        """Atomically take the next piece of work for ``owner`` (see module doc), or None.

        Ready work is a trunk whose pending runs wait for a branch checkpoint (the piece is its
        next segment: from its latest ready checkpoint to the next branch step) or a run that is
        ready (the piece is its own part: after its branch step when it branches, else all of
        it). Runs whose branch checkpoint is ready go first (they bank results and free their
        trunk's checkpoints, where another trunk would only add work in flight: under a time
        limit a worker that trains trunk after trunk finishes nothing), longest first; then the
        longest of the trunks and the runs without a trunk: a trunk counts its steps still to
        train plus the own parts of the runs waiting for it, a run its own part, in the units of
        ``seconds(row, tokens)`` (default: FLOPs, ``6 N tokens``); ties go to trunks, then to
        registration order.

        ``budget_s``: a piece whose own time exceeds it is not claimed; it stays pending and is
        listed in ``self.left`` (``kind, key, est_s``); ``overhead(kind, row)`` adds the seconds
        it costs besides its tokens (compilation, evaluation; not counted in the order).
        ``progress_of(kind, folder)``: a marker
        of the newest checkpoint in a run's or trunk's folder. At ``max_attempts`` a piece fails
        only when its marker did not change since its attempts were last counted: attempts
        count consecutive deaths of its workers without a new checkpoint.
        """
        from coqat.sweep.keys import code_version

        version = code_version() if version is None else version
        seconds = seconds or _flops_seconds
        now = time.time()
        self.left: list[dict[str, Any]] = []
        with self.tx() as db:
            stale = self._stale_owners(db, now)
            qs = ",".join("?" * len(stale)) or "NULL"
            sweep_cond, sweep_args = sweep_filter(sweep)
            sweep_sql = f" AND {sweep_cond}" if sweep_cond else ""
            cands: list[tuple] = []
            if trunks:
                for t in db.execute(
                    f"""SELECT t.rowid AS rid, t.* FROM trunks t WHERE t.code_version=?
                    AND t.status!='failed' AND (t.status!='running' OR t.owner IN ({qs}))""",
                    (version, *stale),
                ).fetchall():
                    waiting = self._waiting_runs(db, t["key"], sweep_sql, sweep_args)
                    if not waiting:
                        continue
                    seg, total = self._trunk_cost(db, t["key"], waiting, seconds)
                    cands.append((1, -total, 0, t["rid"], "trunk", t, seg))
            for r in db.execute(
                f"""SELECT r.rowid AS rid, r.*, EXISTS (SELECT 1 FROM trunk_steps s
                    WHERE s.trunk=r.trunk AND s.step=r.branch_step) AS ckpt
                FROM runs r WHERE r.code_version=?
                AND (r.status='pending' OR (r.status='running' AND r.owner IN ({qs})))
                AND (r.trunk IS NULL
                    OR EXISTS (SELECT 1 FROM trunk_steps s
                        WHERE s.trunk=r.trunk AND s.step=r.branch_step)
                    OR EXISTS (SELECT 1 FROM trunks t WHERE t.key=r.trunk
                        AND t.status='failed'){'' if trunks else ' OR 1'}){sweep_sql}""",
                (version, *stale, *sweep_args),
            ).fetchall():
                own = seconds(r, own_tokens(r, branched=bool(trunks and r["ckpt"])))
                branch = bool(r["trunk"] and trunks and r["ckpt"])  # its checkpoint is ready
                cands.append((0 if branch else 1, -own, 1, r["rid"], "run", r, own))
            cands.sort(key=lambda c: c[:4])
            for *_, kind, row, est in cands:
                if row["attempts"] >= max_attempts and not self._progressed(
                    db, kind, row, progress_of
                ):
                    self._give_up(db, kind, row, now)
                    continue
                if budget_s is not None and overhead is not None:
                    est += overhead(kind, row)
                if budget_s is not None and est > budget_s:
                    self.left.append({"kind": kind, "key": row["key"], "est_s": est})
                    continue
                if kind == "trunk":
                    db.execute(
                        "UPDATE trunks SET status='running', owner=?, lease_until=?, "
                        "attempts=attempts+1, updated=? WHERE key=?",
                        (owner, now + lease_s, now, row["key"]),
                    )
                    return Claim(
                        kind="trunk",
                        key=row["key"],
                        config=json.loads(row["config"]),
                        trunk_dir=row["trunk_dir"],
                        owner=owner,
                        est_s=est,
                    )
                start_from = None
                if row["trunk"] and trunks and row["ckpt"]:
                    s = db.execute(
                        "SELECT path FROM trunk_steps WHERE trunk=? AND step=?",
                        (row["trunk"], row["branch_step"]),
                    ).fetchone()
                    start_from = s["path"] if s else None
                db.execute(
                    "UPDATE runs SET status='running', owner=?, lease_until=?, "
                    "attempts=attempts+1, started=? WHERE key=?",
                    (owner, now + lease_s, now, row["key"]),
                )
                return Claim(
                    kind="run",
                    key=row["key"],
                    config=json.loads(row["config"]),
                    run_dir=row["run_dir"],
                    trunk=row["trunk"],
                    branch_step=row["branch_step"],
                    start_from=start_from,
                    owner=owner,
                    est_s=est,
                )
        return None

    @staticmethod
    def _waiting_runs(db: _Connection, trunk: str, sweep_sql: str = "", sweep_args=()) -> list:
        """Pending runs of ``trunk`` whose branch checkpoint is not ready, by branch step."""
        return db.execute(
            f"""SELECT r.* FROM runs r WHERE r.trunk=? AND r.status='pending'{sweep_sql}
            AND NOT EXISTS (SELECT 1 FROM trunk_steps s
                WHERE s.trunk=r.trunk AND s.step=r.branch_step)
            ORDER BY r.branch_step, r.rowid""",
            (trunk, *sweep_args),
        ).fetchall()

    @staticmethod
    def _trunk_cost(db: _Connection, trunk: str, waiting: list, seconds) -> tuple[float, float]:
        """(next segment, everything that waits for the trunk) in ``seconds`` units: the next
        segment runs from the latest ready checkpoint before the first needed branch step."""
        ready = [r[0] for r in db.execute("SELECT step FROM trunk_steps WHERE trunk=?", (trunk,))]
        first, last = waiting[0]["branch_step"], waiting[-1]["branch_step"]
        start = max((s for s in ready if s < first), default=0)
        tps = tokens_per_step(waiting[0])
        seg = seconds(waiting[0], (first - start) * tps)
        total = seconds(waiting[0], (last - start) * tps) + sum(
            seconds(r, own_tokens(r, branched=True)) for r in waiting
        )
        return seg, total

    @staticmethod
    def _progressed(db: _Connection, kind: str, row: Any, progress_of) -> bool:
        """At the attempt limit: did the work checkpoint since its attempts were last counted?
        Then its count starts again (and the new marker is kept)."""
        if progress_of is None:
            return False
        folder = row["trunk_dir"] if kind == "trunk" else row["run_dir"]
        try:
            marker = progress_of(kind, folder)
        except OSError:
            return False
        if not marker or marker == row["progress"]:
            return False
        table = "trunks" if kind == "trunk" else "runs"
        db.execute(
            f"UPDATE {table} SET attempts=0, progress=? WHERE key=?", (marker, row["key"])
        )
        return True

    @staticmethod
    def _give_up(db: _Connection, kind: str, row: Any, now: float) -> None:
        why = (
            f"gave up after {row['attempts']} attempts without progress (its worker died each "
            "time before a new checkpoint: out of memory, or killed or preempted more often than "
            "it checkpoints? set checkpoint_every)"
        )
        if kind == "trunk":
            db.execute(
                "UPDATE trunks SET status='failed', owner=NULL, error=?, updated=? WHERE key=?",
                (why, now, row["key"]),
            )
        else:
            db.execute(
                "UPDATE runs SET status='failed', owner=NULL, finished=?, error=? WHERE key=?",
                (now, f"{why}; last error: {row['error'] or '-'}", row["key"]),
            )

    def heartbeat(self, claim: Claim, lease_s: float = 120.0) -> bool:
        """Renew the lease of ``claim``; False when the caller no longer owns it."""
        table = "trunks" if claim["kind"] == "trunk" else "runs"
        with self.tx() as db:
            cur = db.execute(
                f"UPDATE {table} SET lease_until=? WHERE key=? AND owner=? AND status='running'",
                (time.time() + lease_s, claim["key"], claim["owner"]),
            )
            return cur.rowcount == 1

    def release(self, claim: Claim) -> None:
        """Give a claim back unfinished (interrupted, preempted): it becomes pending again."""
        table = "trunks" if claim["kind"] == "trunk" else "runs"
        with self.tx() as db:
            db.execute(
                f"UPDATE {table} SET status='pending', owner=NULL, lease_until=NULL, "
                f"attempts=max(attempts-1, 0) WHERE key=? AND owner=? AND status='running'",
                (claim["key"], claim["owner"]),
            )

    def release_owner(self, owner: str) -> int:
        """Give back every claim ``owner`` holds (a worker interrupted between a claim and the
        code that would release it); returns how many."""
        n = 0
        with self.tx() as db:
            for table in ("runs", "trunks"):
                n += db.execute(
                    f"UPDATE {table} SET status='pending', owner=NULL, lease_until=NULL, "
                    f"attempts=max(attempts-1, 0) WHERE owner=? AND status='running'",
                    (owner,),
                ).rowcount
        return n

    # ------------------------------------------------------------------------ results
    def complete(self, key: str, result: dict[str, Any]) -> bool:
        """Record a finished run (``result['status']``: 'done' or 'diverged'). A run already
        done/diverged is left untouched (returns False): results are written exactly once."""
        status = result.get("status", "done")
        if status not in ("done", "diverged"):
            raise ValueError(f"status: {status!r} is not a final training status")
        r = dict(result)
        if "wall" not in r and ("wall_fp" in r or "wall_qat" in r):
            r["wall"] = (r.get("wall_fp") or 0.0) + (r.get("wall_qat") or 0.0)
        if not r.get("commit"):
            r["commit"] = r.get("version", "")
        cols = {k: _num(r[k]) for k in RESULT_COLUMNS if k in r}
        for k, v in list(cols.items()):
            if RESULT_COLUMNS[k] == "REAL" and isinstance(v, str):
                try:
                    cols[k] = float(v)
                except ValueError:
                    cols[k] = None
        sets = ", ".join(f'"{k}"=?' for k in cols)
        blob = json.dumps(r, default=str, allow_nan=True)
        with self.tx() as db:
            cur = db.execute(
                f"UPDATE runs SET status=?, owner=NULL, lease_until=NULL, finished=?, error=NULL, "
                f"result=?{', ' + sets if sets else ''} WHERE key=? "
                f"AND status NOT IN ('done', 'diverged')",
                (status, time.time(), blob, *cols.values(), key),
            )
            return cur.rowcount == 1

    def fail(self, key: str, error: str) -> bool:
        """Record a run that raised (error text kept); not retried unless reset."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE runs SET status='failed', owner=NULL, lease_until=NULL, finished=?, "
                "error=? WHERE key=? AND status NOT IN ('done', 'diverged')",
                (time.time(), error[-20000:], key),
            )
            return cur.rowcount == 1

    def reset(self, statuses: tuple[str, ...] = ("failed",)) -> int:
        """Make runs (and trunks) with these statuses pending again (attempts reset)."""
        qs = ",".join("?" * len(statuses))
        with self.tx() as db:
            n = db.execute(
                f"UPDATE runs SET status='pending', owner=NULL, lease_until=NULL, attempts=0 "
                f"WHERE status IN ({qs})",
                statuses,
            ).rowcount
            db.execute(
                "UPDATE trunks SET status='pending', owner=NULL, attempts=0 WHERE status='failed'"
            )
        return n

    # ------------------------------------------------------------------------ trunks
    def trunk_ready_steps(self, trunk: str) -> dict[int, str]:
        rows = self.db.execute(
            "SELECT step, path FROM trunk_steps WHERE trunk=? ORDER BY step", (trunk,)
        ).fetchall()
        return {r["step"]: r["path"] for r in rows}

    def trunk_needed_steps(self, trunk: str) -> list[int]:
        """Branch steps of pending runs of ``trunk`` whose checkpoint is not ready yet."""
        rows = self.db.execute(
            """SELECT DISTINCT branch_step FROM runs r WHERE trunk=? AND status='pending'
            AND NOT EXISTS (SELECT 1 FROM trunk_steps s WHERE s.trunk=r.trunk
                AND s.step=r.branch_step) ORDER BY branch_step""",
            (trunk,),
        ).fetchall()
        return [r[0] for r in rows]

    def waiting_runs(self, trunk: str) -> list[dict[str, Any]]:
        """Pending runs of ``trunk`` whose branch checkpoint is not ready, by branch step."""
        return [dict(r) for r in self._waiting_runs(self.db, trunk)]

    def trunk_dir(self, trunk: str) -> str | None:
        """The trunk's folder, relative to the run root."""
        row = self.db.execute("SELECT trunk_dir FROM trunks WHERE key=?", (trunk,)).fetchone()
        return row[0] if row else None

    def trunk_step_ready(self, claim: Claim, step: int, path: str | Path) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO trunk_steps VALUES (?, ?, ?, ?)",
                (claim["key"], int(step), str(path), time.time()),
            )
            db.execute(
                "UPDATE trunks SET updated=? WHERE key=? AND owner=?",
                (time.time(), claim["key"], claim["owner"]),
            )

    def finish_trunk(self, claim: Claim, error: str | None = None) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE trunks SET status=?, owner=NULL, lease_until=NULL, error=?, updated=? "
                "WHERE key=? AND owner=?",
                ("failed" if error else "done", error, time.time(), claim["key"], claim["owner"]),
            )

    def forget_trunk_step(self, trunk: str, step: int) -> None:
        """A ready checkpoint turned out missing: train it again."""
        with self.tx() as db:
            db.execute("DELETE FROM trunk_steps WHERE trunk=? AND step=?", (trunk, step))

    def trunk_finished(self, trunk: str) -> bool:
        """All runs of ``trunk`` are done/diverged/failed (its checkpoints can go)."""
        row = self.db.execute(
            "SELECT count(*) FROM runs WHERE trunk=? AND status IN ('pending', 'running')",
            (trunk,),
        ).fetchone()
        return row[0] == 0

    def drop_trunk_steps(self, trunk: str) -> list[str]:
        """Forget the ready checkpoints of a finished trunk; returns their paths (to delete)."""
        with self.tx() as db:
            if db.execute(
                "SELECT count(*) FROM runs WHERE trunk=? AND status IN ('pending', 'running')",
                (trunk,),
            ).fetchone()[0]:
                return []
            paths = [
                r[0] for r in db.execute("SELECT path FROM trunk_steps WHERE trunk=?", (trunk,))
            ]
            db.execute("DELETE FROM trunk_steps WHERE trunk=?", (trunk,))
        return paths

    # ------------------------------------------------------------------------ queries
    def counts(self, sweep: SweepSelection = None, version: str | None = None) -> dict[str, int]:
        where, args = self._where(sweep, version)
        rows = self.db.execute(
            f"SELECT status, count(*) FROM runs r{where} GROUP BY status", args
        ).fetchall()
        out = {s: 0 for s in STATUSES}
        out.update({r[0]: r[1] for r in rows})
        return out

    def _where(
        self, sweep: SweepSelection, version: str | None, statuses=None
    ) -> tuple[str, tuple]:
        conds, args = [], []
        cond, names = sweep_filter(sweep)
        if cond:
            conds.append(cond)
            args.extend(names)
        if version:
            conds.append("r.code_version=?")
            args.append(version)
        if statuses:
            conds.append(f"r.status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        return (" WHERE " + " AND ".join(conds) if conds else ""), tuple(args)

    def rows(
        self,
        statuses: Iterable[str] | None = None,
        sweep: SweepSelection = None,
        version: str | None = None,
    ) -> list[dict[str, Any]]:
        where, args = self._where(sweep, version, tuple(statuses) if statuses else None)
        cur = self.db.execute(f"SELECT r.* FROM runs r{where} ORDER BY r.rowid", args)
        return [dict(r) for r in cur.fetchall()]

    def sweeps(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT sweep FROM sweep_runs ORDER BY 1")]

    def trunks(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM trunks ORDER BY created")]

    def to_records(
        self,
        statuses: Iterable[str] | None = ("done",),
        sweep: SweepSelection = None,
        version: str | None = None,
    ) -> list[dict[str, Any]]:
        """Flat records for the law fitter: ``N, D_fp, D_qat, bits, loss, cluster`` first, then
        every other column (NaN for missing numbers) and the scalar fields of the result record
        that have no column of their own."""
        from coqat.sweep.keys import variant_of

        out = []
        sweeps_of: dict[str, list[str]] = {}
        for s, k in self.db.execute("SELECT sweep, key FROM sweep_runs"):
            sweeps_of.setdefault(k, []).append(s)
        for row in self.rows(statuses, sweep, version):
            rec: dict[str, Any] = {
                "N": row["N"],
                "D_fp": row["D_fp"],
                "D_qat": row["D_qat"],
                "bits": row["bits"],
                "loss": row["loss"],
                "cluster": row["cluster"],
            }
            for k in RESULT_COLUMNS:
                rec.setdefault(k, row[k])
            for k in REAL_COLUMNS | {"loss"}:
                if rec.get(k) is None:
                    rec[k] = float("nan")
            rec.update(
                key=row["key"],
                status=row["status"],
                sweep=",".join(sorted(sweeps_of.get(row["key"], []))),
                trunk=row["trunk"] or "",
                branch_step=row["branch_step"],
                code_version=row["code_version"],
                data_hash=row["data_hash"],
                attempts=row["attempts"],
                error=row["error"] or "",
                run_dir=row["run_dir"],
            )
            if row["result"]:
                for k, v in json.loads(row["result"]).items():
                    if k not in rec and (v is None or isinstance(v, int | float | str | bool)):
                        rec[k] = v
            rec["config"] = row["config"]
            rec["variant"] = variant_of(row["config"]) if row["config"] else ""
            out.append(rec)
        return out

    def export(
        self,
        path: str | Path,
        format: str | None = None,
        statuses: Iterable[str] | None = ("done",),
        sweep: SweepSelection = None,
        since: float | None = None,
        tags: dict[str, Any] | None = None,
    ) -> Path:
        """Write :meth:`to_records` as CSV, Parquet or JSON Lines (format from the suffix when
        not given): only runs finished at or after ``since`` (epoch seconds) when given, each
        record with the fields of ``tags`` added (e.g. the call that trained them)."""
        return write_records(self.records_since(statuses, sweep, since, tags), path, format)

    def records_since(
        self,
        statuses: Iterable[str] | None = ("done",),
        sweep: SweepSelection = None,
        since: float | None = None,
        tags: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`to_records` of the runs finished at or after ``since``, with ``tags`` added."""
        recs = self.to_records(statuses, sweep)
        if since is not None:
            done_at = {r["key"]: r["finished"] for r in self.rows(statuses, sweep)}
            recs = [r for r in recs if (done_at.get(r["key"]) or 0.0) >= since]
        return [r | dict(tags or {}) for r in recs]


EXPORT_FORMATS = ("csv", "parquet", "jsonl")


def write_records(
    records: list[dict[str, Any]], path: str | Path, format: str | None = None
) -> Path:
    """Write records as CSV, Parquet or JSON Lines (atomically: temp file then rename)."""
    import csv

    p = Path(path)
    fmt = (format or p.suffix.lstrip(".") or "csv").lower()
    if fmt == "pq":
        fmt = "parquet"
    if fmt not in EXPORT_FORMATS:
        raise CoqatError(f"format: {fmt!r} is not allowed; choose one of {list(EXPORT_FORMATS)}")
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":  # one record a line, numbers as they are (NaN kept), for `results import`
        from coqat.config import atomic_write_text

        text = "".join(json.dumps(r, default=str, allow_nan=True) + "\n" for r in records)
        atomic_write_text(p, text)
        return p
    cols: list[str] = []
    for r in records:
        for k in r:
            if k not in cols:
                cols.append(k)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    if fmt == "csv":
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, restval="")
            w.writeheader()
            for r in records:
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise CoqatError("parquet export needs pyarrow: pip install pyarrow") from None
        arrays = {}
        for c in cols:
            vals = [r.get(c) for r in records]
            kinds = {type(v) for v in vals if v is not None}
            if kinds and kinds <= {int, float, bool} and kinds != {bool}:
                if kinds <= {int, bool} and None not in vals:
                    arrays[c] = pa.array([int(v) for v in vals], pa.int64())
                else:
                    arrays[c] = pa.array(
                        [float("nan") if v is None else float(v) for v in vals], pa.float64()
                    )
            elif kinds == {bool}:
                arrays[c] = pa.array(vals, pa.bool_())
            else:
                arrays[c] = pa.array([None if v is None else str(v) for v in vals], pa.string())
        pq.write_table(pa.table(arrays), tmp)
    os.replace(tmp, p)
    return p
