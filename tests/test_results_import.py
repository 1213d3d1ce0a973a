"""``coqat results import``, and the reference experiment's raw records through the store.

The check the reference experiment rests on: raw records -> store -> export -> analysis gives the
same set of runs and the same f* table as the raw records themselves, and a grid uses the runs
of one call (the committed CSV once mixed three calls' runs into the 2m 4-bit S = 80 grid).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coqat.errors import ConfigError
from coqat.sweep.experiment.optima import fstar_rows
from coqat.sweep.experiment.records import annotate
from coqat.sweep.experiment.spec import load_experiment
from coqat.sweep.importer import import_files, read_records
from coqat.sweep.store import Store

REF = Path(__file__).resolve().parents[1] / "experiments" / "reference"
RAW = sorted((REF / "results").glob("*.jsonl"))


def _table(rows):
    keys = ("size", "bits", "D_total", "seed", "call", "f_refined", "f_grid", "loss_refined")
    return [tuple(round(r[k], 9) if isinstance(r[k], float) else r[k] for k in keys)
            for r in rows]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The raw records, imported into a fresh store and exported to CSV."""
    d = tmp_path_factory.mktemp("ref")
    import_files(RAW, d / "s.sqlite")
    with Store(d / "s.sqlite", create=False) as st:
        st.export(d / "runs.csv")
        stored = st.to_records(("done",))
    raw = [r for p in RAW for r in read_records(p)]
    return {"raw": raw, "stored": stored, "csv": read_records(d / "runs.csv"), "dir": d}


def test_the_store_holds_every_raw_record_once(ref):
    raw, stored = ref["raw"], ref["stored"]
    assert len(stored) == len(raw) == len({r["key"] for r in stored})
    by_key = {r["key"]: r for r in stored}

    def key(r):
        """A store export keeps its key, or ``<key>-<call>`` when an earlier file holds that key
        from another call (a repeat); a runner record: <config_hash>-<call>."""
        if not r.get("key"):
            return f"{r['config_hash']}-{r['slice']}"
        k = r["key"]
        return k if by_key.get(k, {}).get("call") == r["call"] else f"{k}-{r['call']}"

    assert {r["key"] for r in stored} == {key(r) for r in raw}
    for r in raw:  # numbers and provenance as the device wrote them
        s = by_key[key(r)]
        assert s["loss"] == r["loss"] and s["f"] == r["f"] and s["D_total"] == r["D_total"]
        assert s["commit"] == r["commit"] and s["time"] == r["time"] and s["device"] == r["device"]
        assert s["call"] == (r.get("call") or r["slice"]) and s["trunk"] == (r.get("trunk") or "")
        assert s["code_version"] == r["code_version"]
        cfg = r["config"]
        assert json.loads(s["config"]) == (json.loads(cfg) if isinstance(cfg, str) else cfg)


def test_import_is_idempotent(ref, tmp_path):
    import shutil

    shutil.copy(ref["dir"] / "s.sqlite", tmp_path / "s.sqlite")
    again = import_files(RAW[:2], tmp_path / "s.sqlite")
    assert [x["new"] for x in again] == [0, 0] and all(x["known"] > 0 for x in again)
    with Store(tmp_path / "s.sqlite", create=False) as st:
        assert len(st.to_records(("done",))) == len(ref["raw"])
    # a CSV export imports into another store with the same keys and numbers
    import_files([ref["dir"] / "runs.csv"], tmp_path / "b.sqlite")
    with Store(tmp_path / "b.sqlite", create=False) as st:
        back = {r["key"]: r for r in st.to_records(("done",))}
    assert set(back) == {r["key"] for r in ref["stored"]}
    assert all(back[r["key"]]["loss"] == r["loss"] for r in ref["stored"])


def test_raw_store_export_analysis_agree(ref):
    _, spec = load_experiment(REF)
    tables = {}
    for src in ("raw", "stored", "csv"):
        recs = annotate(ref[src], spec)
        tables[src] = {b: _table(fstar_rows(recs, spec, b)) for b in spec.bases}
    assert tables["raw"] == tables["stored"] == tables["csv"]
    assert len(tables["raw"]["total"]) == 20 and len(tables["raw"]["qat"]) == 17


def test_a_grid_uses_the_runs_of_one_call(ref):
    """2m, 4 bits, S = 80, seed 0, decay total: s8 ran the grid; s7 and s11 repeated f = 0.1,
    0.2 and 0.6 on trunks of their own. The f* row uses s8's runs only."""
    _, spec = load_experiment(REF)
    rows = fstar_rows(annotate(ref["stored"], spec), spec, "total")
    (r,) = [r for r in rows if (r["size"], r["bits"], r["seed"]) == ("2m", 4.0, 0)
            and round(r["S_total"]) == 80]
    assert r["call"] == "s8" and len(r["f"]) == 9
    assert r["f_refined"] == pytest.approx(0.148, abs=5e-4)
    s8 = sorted((x["f"], x["loss"]) for x in ref["raw"] if x.get("slice") == "s8"
                and x["size"] == "2m"
                and x["bits"] == 4 and x["seed"] == 0 and x["schedule"] == "fused"
                and (x.get("overrides") or {}).get("qat.cooldown_of") == "total")
    assert r["f"] == pytest.approx([f for f, _ in s8])
    assert r["loss"] == pytest.approx([L for _, L in s8])


def test_bad_records_are_refused_with_the_field(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"loss": 2.0, "N": 1, "D_fp": 1, "D_qat": 0, "bits": 4}) + "\n")
    with pytest.raises(ConfigError, match="config"):
        import_files([p], tmp_path / "s.sqlite")
    p.write_text(json.dumps({"status": "pending", "config": {}}) + "\n")
    with pytest.raises(ConfigError, match="status"):
        import_files([p], tmp_path / "s.sqlite")
    with pytest.raises(ConfigError, match="unknown format"):
        read_records(tmp_path / "s.sqlite")
    with Store(tmp_path / "s.sqlite", create=False) as st:  # nothing half-imported
        assert st.to_records(None) == []


def test_a_run_key_trained_again_in_another_call_is_kept_beside_the_first(
        fake_sweep_store, tmp_path):
    """Two calls that trained the same run keys (a repeat): both calls' records stay, the
    second under ``<key>-<call>``; importing either file again adds nothing."""
    from coqat.cli import main

    files = []
    for call in ("first", "again"):
        out = tmp_path / f"{call}.jsonl"
        assert main(["results", "export", "--store", str(fake_sweep_store), "--out", str(out),
                     "--tag", f"call={call}"]) == 0
        files.append(out)
    n = len(read_records(files[0]))
    got = import_files(files, tmp_path / "s.sqlite")
    assert [(x["new"], x["known"]) for x in got] == [(n, 0), (n, 0)]
    assert [(x["new"], x["known"]) for x in import_files(files, tmp_path / "s.sqlite")] == [
        (0, n), (0, n)]
    with Store(tmp_path / "s.sqlite", create=False) as st:
        back = st.to_records(("done",))
    keys = {r["key"] for r in read_records(files[0])}
    assert {r["key"] for r in back if r["call"] == "first"} == keys
    assert {r["key"] for r in back if r["call"] == "again"} == {f"{k}-again" for k in keys}


def test_export_jsonl_since_and_tag_round_trip(fake_sweep_store, tmp_path):
    """`coqat results export --format jsonl --since T --tag call=X` writes what `coqat results
    import` reads back: the runs finished from T on, with their keys and the tag."""
    from coqat.cli import main

    with Store(fake_sweep_store, readonly=True) as st:
        done = sorted(r["finished"] for r in st.rows(("done",)))
    cut = done[len(done) // 2]
    out = tmp_path / "late.jsonl"
    assert main(["results", "export", "--store", str(fake_sweep_store), "--out", str(out),
                 "--since", str(cut), "--tag", "call=late"]) == 0
    recs = read_records(out)
    assert len(recs) == sum(1 for t in done if t >= cut) and all(r["call"] == "late" for r in recs)
    import_files([out], tmp_path / "s.sqlite")
    with Store(tmp_path / "s.sqlite", create=False) as st:
        back = st.to_records(("done",))
    assert {r["key"] for r in back} == {r["key"] for r in recs}
    assert {r["call"] for r in back} == {"late"}
    assert main(["results", "export", "--store", str(fake_sweep_store), "--out", str(out),
                 "--tag", "nokey"]) == 2
