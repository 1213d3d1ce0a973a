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
taken up front, so two workers cannot both see a row as free). It first takes a trunk that has
pending runs waiting for a branch checkpoint, else a run that is ready (no trunk, its branch
checkpoint is ready, or its trunk failed -- then it trains alone, which gives the same result).
A ``running`` row counts as free when its lease expired or its owner is a dead process on this
host. Workers renew their lease with :meth:`heartbeat`. A ``done`` or ``diverged`` run is never
handed out again; :meth:`complete` on it is a no-op. Every write is one transaction, so a kill -9
at any point leaves a consistent database (SQLite's journal rolls back a torn transaction).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
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


def _num(v: Any) -> Any:
    """SQLite has no NaN (it stores NULL); keep None for missing, floats otherwise."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v


class Claim(dict):
    """What a worker got: ``kind`` ('run' | 'trunk'), ``key``, ``config`` (dict), and for runs
    ``run_dir``, ``trunk``, ``branch_step``, ``start_from`` (a ready trunk checkpoint or None);
    for trunks ``trunk_dir``."""

    def __getattr__(self, k: str) -> Any:
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


class Store:
    """A results store at ``path`` (created when missing unless ``create=False``)."""

    def __init__(self, path: str | Path, *, create: bool = True, timeout: float = 60.0):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StoreError(f"{self.path}: no such results store")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a coqat results store ({e})") from None
        if str(mode).lower() != "wal":  # e.g. a filesystem without shared memory
            self.db.execute("PRAGMA journal_mode = DELETE")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self._init_schema()

    # ------------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``; rollback on error)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _init_schema(self) -> None:
        try:  # the common case, a current store: read only, no write lock
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is not None and int(row[0]) == SCHEMA_VERSION:
                return
        except (sqlite3.OperationalError, ValueError):
            pass
        with self.tx() as db:
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
            elif db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(f"{self.path}: an SQLite file that is not a coqat results store")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def root(self) -> Path | None:
        """The run root recorded at registration (run and trunk folders are relative to it)."""
        r = self.meta("root")
        return Path(r) if r else None

    def close(self) -> None:
        self.db.close()

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
        sweep: str | None = None,
        trunks: bool = True,
    ) -> Claim | None:
        """Atomically take the next piece of work for ``owner`` (see module doc), or None."""
        from coqat.sweep.keys import code_version

        version = code_version() if version is None else version
        now = time.time()
        with self.tx() as db:
            stale = self._stale_owners(db, now)
            qs = ",".join("?" * len(stale)) or "NULL"
            sweep_sql = " AND r.key IN (SELECT key FROM sweep_runs WHERE sweep=?)" if sweep else ""
            sweep_args = (sweep,) if sweep else ()
            if trunks:
                while True:
                    t = db.execute(
                        f"""SELECT t.* FROM trunks t WHERE t.code_version=? AND t.status!='failed'
                        AND (t.status!='running' OR t.owner IN ({qs}))
                        AND EXISTS (SELECT 1 FROM runs r WHERE r.trunk=t.key
                            AND r.status='pending'{sweep_sql}
                            AND NOT EXISTS (SELECT 1 FROM trunk_steps s
                                WHERE s.trunk=r.trunk AND s.step=r.branch_step))
                        ORDER BY t.created, t.key LIMIT 1""",
                        (version, *stale, *sweep_args),
                    ).fetchone()
                    if t is None:
                        break
                    if t["attempts"] >= max_attempts:
                        db.execute(
                            "UPDATE trunks SET status='failed', owner=NULL, error=?, updated=? "
                            "WHERE key=?",
                            (f"gave up after {t['attempts']} attempts", now, t["key"]),
                        )
                        continue
                    db.execute(
                        "UPDATE trunks SET status='running', owner=?, lease_until=?, "
                        "attempts=attempts+1, updated=? WHERE key=?",
                        (owner, now + lease_s, now, t["key"]),
                    )
                    return Claim(
                        kind="trunk",
                        key=t["key"],
                        config=json.loads(t["config"]),
                        trunk_dir=t["trunk_dir"],
                        owner=owner,
                    )
            while True:
                r = db.execute(
                    f"""SELECT r.* FROM runs r WHERE r.code_version=?
                    AND (r.status='pending' OR (r.status='running' AND r.owner IN ({qs})))
                    AND (r.trunk IS NULL
                        OR EXISTS (SELECT 1 FROM trunk_steps s
                            WHERE s.trunk=r.trunk AND s.step=r.branch_step)
                        OR EXISTS (SELECT 1 FROM trunks t WHERE t.key=r.trunk
                            AND t.status='failed'){'' if trunks else ' OR 1'}){sweep_sql}
                    ORDER BY r.rowid LIMIT 1""",
                    (version, *stale, *sweep_args),
                ).fetchone()
                if r is None:
                    return None
                if r["attempts"] >= max_attempts:
                    db.execute(
                        "UPDATE runs SET status='failed', owner=NULL, finished=?, error=? "
                        "WHERE key=?",
                        (
                            now,
                            f"gave up after {r['attempts']} attempts (its worker died each "
                            f"time: out of memory, preempted or killed?); last error: "
                            f"{r['error'] or '-'}",
                            r["key"],
                        ),
                    )
                    continue
                start_from = None
                if r["trunk"] and trunks:
                    s = db.execute(
                        "SELECT path FROM trunk_steps WHERE trunk=? AND step=?",
                        (r["trunk"], r["branch_step"]),
                    ).fetchone()
                    start_from = s["path"] if s else None
                db.execute(
                    "UPDATE runs SET status='running', owner=?, lease_until=?, "
                    "attempts=attempts+1, started=? WHERE key=?",
                    (owner, now + lease_s, now, r["key"]),
                )
                return Claim(
                    kind="run",
                    key=r["key"],
                    config=json.loads(r["config"]),
                    run_dir=r["run_dir"],
                    trunk=r["trunk"],
                    branch_step=r["branch_step"],
                    start_from=start_from,
                    owner=owner,
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
    def counts(self, sweep: str | None = None, version: str | None = None) -> dict[str, int]:
        where, args = self._where(sweep, version)
        rows = self.db.execute(
            f"SELECT status, count(*) FROM runs r{where} GROUP BY status", args
        ).fetchall()
        out = {s: 0 for s in STATUSES}
        out.update({r[0]: r[1] for r in rows})
        return out

    def _where(self, sweep: str | None, version: str | None, statuses=None) -> tuple[str, tuple]:
        conds, args = [], []
        if sweep:
            conds.append("r.key IN (SELECT key FROM sweep_runs WHERE sweep=?)")
            args.append(sweep)
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
        sweep: str | None = None,
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
        sweep: str | None = None,
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
        sweep: str | None = None,
    ) -> Path:
        """Write :meth:`to_records` as CSV or Parquet (format from the suffix when not given)."""
        return write_records(self.to_records(statuses, sweep), path, format)


def write_records(
    records: list[dict[str, Any]], path: str | Path, format: str | None = None
) -> Path:
    """Write records as CSV or Parquet (atomically: temp file then rename)."""
    import csv

    p = Path(path)
    fmt = (format or p.suffix.lstrip(".") or "csv").lower()
    if fmt == "pq":
        fmt = "parquet"
    if fmt not in ("csv", "parquet"):
        raise CoqatError(f"format: {fmt!r} is not allowed; choose one of ['csv', 'parquet']")
    p.parent.mkdir(parents=True, exist_ok=True)
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
