"""Whole copies of a live store (``sweep run --backup``) and their guarantees."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import fake_env, make_store, runs_of

from coqat.cli import main
from coqat.sweep.safekeep import PeriodicBackup, backup_store
from coqat.sweep.store import Store, StoreError


def test_backup_of_a_live_store_is_whole_and_replaces_the_last(tmp_path):
    st = make_store(tmp_path)  # open, WAL live
    n = len(runs_of())
    dest = tmp_path / "out" / "copy.db"
    backup_store(tmp_path / "s.db", dest)
    st.register(runs_of(bits=[3]), "t", tmp_path / "root", version="v")
    backup_store(tmp_path / "s.db", dest)  # over the first copy
    assert not (tmp_path / "out" / "copy.db.tmp").exists()
    assert not (tmp_path / "out" / "copy.db-wal").exists()  # nothing outside the copy
    with Store(dest, readonly=True) as cp:
        assert cp.integrity_check() == "ok" and len(cp.rows()) == n + len(runs_of(bits=[3]))
    st.close()
    with pytest.raises(StoreError, match="no such results store"):
        backup_store(tmp_path / "missing.db", dest)


def test_periodic_backup_copies_while_running_and_at_the_end(tmp_path):
    st = make_store(tmp_path)
    dest = tmp_path / "copy.db"
    with PeriodicBackup(tmp_path / "s.db", dest, every=0.05) as keep:
        import time

        t = time.time() + 5
        while keep.copies < 2 and time.time() < t:
            time.sleep(0.02)
        st.register(runs_of(bits=[3]), "t", tmp_path / "root", version="v")
    assert keep.copies >= 3  # two ticks and the copy at the end
    with Store(dest, readonly=True) as cp:  # the last copy has the last registration
        assert len(cp.rows()) == len(runs_of()) + len(runs_of(bits=[3]))
    st.close()
    with pytest.raises(ValueError):
        PeriodicBackup(tmp_path / "s.db", dest, every=0)


def test_sweep_run_with_backup(tmp_path, capsys):
    """Four fake workers write the store; --backup leaves a whole copy with every result."""
    sweep = tmp_path / "sw.yaml"
    sweep.write_text(
        "name: t\nbase: {model: {vocab_size: 512, seq_len: 64}, optim: {batch_size: 8}, "
        "tokens: 51200, device: cpu}\nsizes: [tiny]\nbits: [2, 4]\nfractions: [0, 0.25, 1]\n"
        "schedules: [fused, standard]\n")
    dest = tmp_path / "collected" / "copy.db"
    cmd = [sys.executable, "-m", "coqat.cli", "sweep", "run", str(sweep), "--store",
           str(tmp_path / "s.db"), "--root", str(tmp_path / "root"), "--slots", "4",
           "--engine", "fake", "--devices", "none", "--no-progress", "--backup", str(dest),
           "--backup-every", "0.2"]
    out = subprocess.run(cmd, env=fake_env(tmp_path, delay=0.05), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "store copied to" in out.stdout
    with Store(tmp_path / "s.db", readonly=True) as a, Store(dest, readonly=True) as b:
        assert b.integrity_check() == "ok"
        assert {r["key"]: r["loss"] for r in a.rows(("done",))} == {
            r["key"]: r["loss"] for r in b.rows(("done",))}
    assert main(["sweep", "run", str(sweep), "--store", str(tmp_path / "s.db"), "--root",
                 str(tmp_path / "root"), "--engine", "fake", "--backup", str(dest),
                 "--backup-every", "0"]) == 2
    assert "--backup-every" in capsys.readouterr().err
