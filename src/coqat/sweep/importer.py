"""``coqat results import``: finished runs from JSONL or CSV files into a results store.

Each record is one finished run (status ``done`` or ``diverged``): its result fields (``loss``,
``N``, ``D_fp``, ``D_qat``, ``bits``, ... as :meth:`Store.complete` records them), its resolved
``config`` (a RunConfig dict, or its JSON text) and its provenance, kept as they are: ``commit``,
``time`` (ISO date), ``device``, and the call that trained it (``call``, else ``slice``).

Keys: a record's ``key`` where it has one (a store export); otherwise
``<config_hash>-<call>`` from the record's own ``config_hash`` (the hash of its config, as the
trainer wrote it): a configuration run in several calls gives one row per call, all kept, told
apart by call and FP trunk (``trunk``). A known key is left as it is, so importing a file twice
changes nothing; a store export's key that the store holds from *another* call (the same run
key trained again: a repeat) is kept as ``<key>-<call>``, beside the first. ``code_version``:
the record's, else ``version+g<commit>``. Each file is imported in one transaction: a failure
leaves the store as it was.
"""

from __future__ import annotations

import csv
import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from coqat.errors import ConfigError
from coqat.sweep.store import RESULT_COLUMNS, Store

FINAL = ("done", "diverged")
# store row fields (not result fields) that a store export writes beside the result's
ROW_FIELDS = (
    "key", "status", "sweep", "trunk", "branch_step", "cluster", "code_version", "data_hash",
    "attempts", "error", "run_dir", "config", "variant",
)


def _csv_value(v: str) -> Any:
    if v == "":
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if v in ("True", "False"):
        return v == "True"
    return v


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL (one JSON object per line) or CSV file (numbers parsed; a
    ``config`` column holds JSON text)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("FILE", f"file not found: {p}")
    if p.suffix.lower() == ".jsonl":
        out = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError("FILE", f"{p}:{i}: not a JSON object ({e})") from None
        return out
    if p.suffix.lower() == ".csv":
        with open(p, newline="") as fh:
            return [{k: _csv_value(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    raise ConfigError("FILE", f"{p}: unknown format {p.suffix!r}; use .jsonl or .csv")


def _epoch(t: Any) -> float | None:
    if isinstance(t, int | float):
        return float(t)
    try:
        return datetime.fromisoformat(str(t).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _num(v: Any, sql_type: str) -> Any:
    if v is None or isinstance(v, bool):
        return None if v is None else int(v)
    if sql_type == "REAL":
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
        return None if math.isnan(v) else v
    if sql_type == "INTEGER":
        try:
            return int(float(v))
        except (TypeError, ValueError):
            return None
    return str(v)


def row_of(rec: dict[str, Any], where: str) -> dict[str, Any]:
    """The store row of one record (see the module doc); ConfigError naming the field and the
    record when it cannot be imported."""
    status = str(rec.get("status") or "done")
    if status not in FINAL:
        raise ConfigError("status", f"{where}: {status!r} is not a finished run; allowed {FINAL}")
    cfg = rec.get("config")
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except json.JSONDecodeError:
            raise ConfigError("config", f"{where}: not JSON text of a RunConfig") from None
    if not isinstance(cfg, dict):
        raise ConfigError("config", f"{where}: each record needs its resolved RunConfig (a dict)")
    for k in ("loss", "N", "D_fp", "D_qat", "bits"):
        if rec.get(k) is None:
            raise ConfigError(k, f"{where}: missing (a finished run records it)")
    call = str(rec.get("call") or rec.get("slice") or "")
    key = rec.get("key")
    if not key:
        ch = rec.get("config_hash")
        if not ch:
            from coqat.config import config_hash

            ch = config_hash(cfg)
        key = f"{ch}-{call}" if call else str(ch)
    commit = str(rec.get("commit") or "")
    version = rec.get("code_version") or (
        f"{rec.get('version') or ''}+g{commit}" if commit else str(rec.get("version") or "")
    )
    result = {k: v for k, v in rec.items() if k not in ROW_FIELDS}
    result.setdefault("call", call)
    if "wall" not in result and ("wall_fp" in result or "wall_qat" in result):
        result["wall"] = (result.get("wall_fp") or 0.0) + (result.get("wall_qat") or 0.0)
    trunk = rec.get("trunk") or None
    when = _epoch(rec.get("time")) or time.time()
    return {
        "key": str(key),
        "config": json.dumps(cfg, sort_keys=True),
        "code_version": str(version),
        "data_hash": str(rec.get("data_hash") or ""),
        "trunk": trunk,
        "branch_step": int(rec.get("branch_step") or 0),
        "cluster": str(rec.get("cluster") or trunk or key),
        "run_dir": str(rec.get("run_dir") or f"runs/{key}"),
        "status": status,
        "created": when,
        "finished": when,
        **{k: _num(result.get(k), t) for k, t in RESULT_COLUMNS.items()},
        "result": json.dumps(result, default=str, allow_nan=True),
    }


def import_records(
    store: Store, records: list[dict[str, Any]], sweep: str, where: str = "records"
) -> dict[str, int]:
    """Add finished runs to ``store`` in one transaction; ``{"new": n, "known": n}`` (a key the
    store has is left as it is). Every row is registered under ``sweep``."""
    rows = [row_of(r, f"{where} record {i + 1}") for i, r in enumerate(records)]
    seen: set[str] = set()
    for r in rows:
        if r["key"] in seen:
            raise ConfigError("key", f"{where}: key {r['key']} appears twice")
        seen.add(r["key"])
    new = known = 0
    with store.tx() as db:
        for r in rows:
            had = db.execute("SELECT result FROM runs WHERE key=?", (r["key"],)).fetchone()
            call = json.loads(r["result"]).get("call") or ""
            if had is not None and call and (json.loads(had[0] or "{}").get("call") or "") != call:
                r = dict(r, key=f"{r['key']}-{call}")  # a repeat in another call: keep both
                had = db.execute("SELECT 1 FROM runs WHERE key=?", (r["key"],)).fetchone()
            db.execute("INSERT OR IGNORE INTO sweep_runs VALUES (?, ?)", (sweep, r["key"]))
            if had is not None:
                known += 1
                continue
            names = ", ".join(f'"{k}"' for k in r)
            db.execute(
                f"INSERT INTO runs ({names}) VALUES ({', '.join('?' * len(r))})",
                tuple(r.values()),
            )
            new += 1
    return {"new": new, "known": known}


def import_files(
    paths: list[str | Path], store_path: str | Path, sweep: str | None = None
) -> list[dict[str, Any]]:
    """Import every file into the store at ``store_path`` (created when missing); one result
    dict per file: ``file``, ``sweep`` (``sweep``, else the file's stem), ``new``, ``known``."""
    out = []
    with Store(store_path) as st:
        for p in paths:
            name = sweep or Path(p).stem
            res = import_records(st, read_records(p), name, where=str(p))
            out.append({"file": str(p), "sweep": name, **res})
    return out
