"""Merge the reference experiment's device results into the results store, and export it.

Each device session appends result records to ``results/session*-*.jsonl`` (see run_slice.py).
This script rebuilds every run's exact RunConfig from the slice definitions, registers it in a
fresh store under the code version that trained it, records its result, and replaces
``experiments/reference/results.sqlite`` with it (the store is derived from the committed JSONL
files: rebuilding keeps its run keys in step with the current RunConfig fields), then exports the
store as CSV and Parquet for the law fitter and the report.

    python experiments/reference/ingest.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# code version that trained each session's results (the device copy has no .git)
SESSION_VERSION = {
    "session1": "0.1.0+session1-2026-11-29",
    "session2": "0.1.0+session2-2026-11-29",
    "session3": "0.1.0+session3-2026-11-29",
    "session4": "0.1.0+session4-2026-11-29",
    "session5": "0.1.0+session5-2026-11-29",
    "session6": "0.1.0+session6-2026-11-29",
}


def configs_and_results(path: Path):
    from run_slice import SLICES, run_config

    for line in path.read_text().splitlines():
        r = json.loads(line)
        sl = SLICES[r["slice"]]
        over = {"optim.lr": r["lr"], "seed": r["seed"]}
        if r["bits"] == 16:
            over["qat.bits"] = 16
        else:
            over |= {
                "qat.bits": r["bits"],
                "qat.fraction": r["f_requested"],
                "qat.schedule": r["schedule"] if r["schedule"] != "fp" else "fused",
            }
        over |= r.get("overrides") or {}
        base = r["base"] if "base" in r else sl.get("base")
        # the data path does not enter the run key; the manifest next to this file does
        cfg = run_config(r["size"], r["D_total"], str(HERE), base, **over)
        assert cfg.tokens == r["D_total"], (cfg.tokens, r["D_total"])
        yield cfg, r


def main() -> None:
    import os

    from coqat.sweep.store import Store

    tmp = HERE / "results.sqlite.tmp"
    for p in HERE.glob("results.sqlite.tmp*"):
        p.unlink()
    store = Store(tmp)
    for path in sorted((HERE / "results").glob("session*-*.jsonl")):
        session = path.stem.split("-")[0]
        version = SESSION_VERSION[session]
        pairs = list(configs_and_results(path))
        for kind in ("lr_sweep", "grid"):
            sel = [(c, r) for c, r in pairs if r["experiment"] == kind]
            if not sel:
                continue
            reg = store.register([c for c, _ in sel], sweep=f"reference-{kind}", version=version)
            done = sum(store.complete(k, r) for k, (_, r) in zip(reg["keys"], sel))
            print(f"{path.name} {kind}: {len(sel)} runs, {reg['new']} new, {done} recorded")
    print(store.counts())
    store.close()
    os.replace(tmp, HERE / "results.sqlite")
    store = Store(HERE / "results.sqlite")
    store.export(HERE / "results.csv")
    store.export(HERE / "results.parquet")
    print("exported", HERE / "results.csv", HERE / "results.parquet")


if __name__ == "__main__":
    main()
