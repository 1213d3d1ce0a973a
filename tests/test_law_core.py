"""Runs table validation, closed form, analytic gradients, JSON round trip, bad inputs."""

import json
import math

import numpy as np
import pytest

from coqat.errors import ConfigError
from coqat.law import (
    ChenQATLaw,
    FractionClosedForm,
    KumarPrecisionLaw,
    PerBitChinchilla,
    QATLaw,
    Runs,
    load_law,
)
from coqat.law.base import features
from coqat.law.fit import huber_objective
from coqat.law.synthetic import EXAMPLE_QAT_PARAMS

REC = {"N": 1e7, "D_fp": 1e9, "D_qat": 1e8, "bits": 4, "loss": 3.2}


# ---- runs table -------------------------------------------------------------------------------
def test_runs_derived_columns():
    r = Runs.from_records([REC, {**REC, "bits": 16, "D_qat": 0, "loss": 3.0, "extra": "x"}])
    assert len(r) == 2
    assert r.D[0] == pytest.approx(1.1e9)
    assert r.f[0] == pytest.approx(1e8 / 1.1e9)
    assert r.S_total[0] == pytest.approx(1.1e9 / (1e7 * 0.5))
    assert r.S_qat[0] == pytest.approx(1e8 / 5e6) and r.S_fp[1] == pytest.approx(1e9 / 2e7)
    assert list(r.cluster) == [0, 1]
    assert len(r.filter(r.bits < 16)) == 1
    assert "extra" in r.columns


def test_runs_csv_parquet(tmp_path):
    recs = [REC, {**REC, "N": 2e7, "cluster": "a"}]
    p = tmp_path / "runs.csv"
    p.write_text("N,D_fp,D_qat,bits,loss,cluster\n1e7,1e9,1e8,4,3.2,a\n2e7,1e9,1e8,2,3.4,a\n")
    r = Runs.from_any(p)
    assert len(r) == 2 and r.cluster_index()[1] == 1
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    t = pa.table({k: [rr.get(k, "b") for rr in recs] for k in list(REC) + ["cluster"]})
    pq.write_table(t, tmp_path / "runs.parquet")
    r2 = Runs.from_any(tmp_path / "runs.parquet")
    assert len(r2) == 2 and r2.N[1] == 2e7
    with pytest.raises(ConfigError, match="runs"):
        Runs.from_any(tmp_path / "runs.txt")


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"loss": float("nan")}, "loss"),
        ({"loss": float("inf")}, "loss"),
        ({"loss": 0.0}, "loss"),
        ({"N": 0}, "N"),
        ({"N": -5}, "N"),
        ({"D_fp": -1}, "D_fp"),
        ({"D_qat": -1}, "D_qat"),
        ({"D_fp": 0, "D_qat": 0}, "D_fp"),
        ({"bits": 9}, "bits"),
        ({"bits": 16}, "D_qat"),  # an FP baseline cannot have QAT tokens
    ],
)
def test_runs_bad_values_name_field_and_row(bad, field):
    with pytest.raises(ConfigError) as e:
        Runs.from_records([REC, {**REC, **bad}])
    assert e.value.field == field
    assert "row 1" in str(e.value)


def test_runs_missing_column_lists_required():
    rec = dict(REC)
    del rec["D_qat"]
    with pytest.raises(ConfigError) as e:
        Runs.from_records([rec])
    assert e.value.field == "D_qat" and "required columns" in str(e.value)


# ---- closed form ------------------------------------------------------------------------------
def test_closed_form_paper_values():
    c = FractionClosedForm()
    assert round(c.predict_fraction(20), 3) == 0.106
    assert round(c.predict_fraction(1000), 3) == 0.377
    assert round(c.predict_fraction(1e5), 3) == 0.557
    assert c.predict_fraction(math.e) == 0.0 and c.predict_fraction(0.5) == 0.0
    with pytest.raises(ConfigError):
        c.predict_fraction(-1)


def test_closed_form_refit_recovers_a():
    S = np.logspace(1, 5, 30)
    f = FractionClosedForm(5.0).predict_fraction(S)
    for loss in ("mae", "lsq"):
        assert FractionClosedForm().fit(S, f, loss=loss).a == pytest.approx(5.0, abs=1e-4)
    with pytest.raises(ConfigError):
        FractionClosedForm().fit(S, f, loss="l3")


def test_closed_form_fraction_in_unit_interval_sweep():
    rng = np.random.default_rng(1)
    N = 10 ** rng.uniform(0, 13, 2000)
    D = 10 ** rng.uniform(0, 16, 2000)
    b = rng.choice([1, 1.58, 2, 3, 4, 5, 6, 8], 2000)
    f = FractionClosedForm().optimal_fraction(N, D, b)
    assert np.all((f >= 0) & (f <= 1))


# ---- gradients --------------------------------------------------------------------------------
def _mixed_features():
    N = np.array([2e6, 5e6, 1e7, 3e7, 1e8, 4e6, 8e6, 2e7, 6e7])
    D_fp = np.array([1e8, 0.0, 5e8, 2e9, 1e10, 1e8, 0.0, 4e9, 3e9])
    D_qat = np.array([1e7, 2e8, 0.0, 4e8, 0.0, 3e7, 1e8, 0.0, 1e9])
    bits = np.array([4, 2, 6, 1, 16, 1.58, 8, 16, 3])
    return features(N, D_fp, D_qat, bits)


@pytest.mark.parametrize("cls", [QATLaw, ChenQATLaw, KumarPrecisionLaw, PerBitChinchilla])
def test_analytic_gradient_matches_finite_differences(cls):
    F = _mixed_features()
    law = cls(groups=sorted(set(F["bits"]))) if cls is PerBitChinchilla else cls()
    rng = np.random.default_rng(0)
    lo, hi = law._x_init_box()
    for _ in range(3):
        x = rng.uniform(lo, hi)
        _, G = law._logpred_grad(x, F)
        h = 1e-6
        for j in range(len(x)):
            e = np.zeros_like(x)
            e[j] = h
            fd = (law._logpred(x + e, F) - law._logpred(x - e, F)) / (2 * h)
            np.testing.assert_allclose(G[:, j], fd, rtol=1e-5, atol=1e-7)
        # the full Huber objective (quadratic and linear regimes)
        logy = law._logpred(x, F) + rng.normal(0, 0.01, F["n"])
        w = rng.integers(0, 3, F["n"]).astype(float)
        for delta in (1e-3, 1.0):
            _, g = huber_objective(law, x, F, logy, w, delta)
            fd = np.array(
                [
                    (
                        huber_objective(law, x + h * np.eye(len(x))[j], F, logy, w, delta, False)
                        - huber_objective(law, x - h * np.eye(len(x))[j], F, logy, w, delta, False)
                    )
                    / (2 * h)
                    for j in range(len(x))
                ]
            )
            np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-4)


# ---- QAT law shape, S_fp=0 and f=0 handling --------------------------------------------------
def test_qat_law_finite_at_endpoints_and_interior_optimum():
    law = QATLaw(EXAMPLE_QAT_PARAMS)
    f = np.linspace(0, 1, 1001)
    for N, S, B in [(2e6, 20, 1), (3e7, 200, 4), (1e9, 1e4, 6)]:
        D = S * N * B / 8
        L = law.loss_at_fraction(N, D, B, f)
        assert np.all(np.isfinite(L))
        i = int(np.argmin(L))
        assert 0 < i < 1000  # interior optimum
        # continuous at both ends (no jump at f=0 / f=1, unlike "third term = 0 if D_fp = 0")
        for a, b in ((0.0, 1e-9), (1.0, 1 - 1e-9)):
            La, Lb = law.loss_at_fraction(N, D, B, np.array([a, b]))
            assert abs(La - Lb) < 1e-4
    # FP runs: delta = 0, pure Chinchilla
    p = EXAMPLE_QAT_PARAMS
    L_fp = law.predict(1e7, 1e9, 0, 16)
    assert L_fp == pytest.approx(p["E"] + p["A"] / 1e7 ** p["alpha"] + p["B"] / 1e9 ** p["beta"])


@pytest.mark.parametrize("xi", [0.0, -0.5])
def test_qat_law_without_positive_xi_has_no_interior_optimum(xi):
    """Why QATLaw bounds xi below by 0: with xi <= 0 and omega, rho >= 0 every penalty term falls
    as f grows at fixed D, so the best fraction is always QAT from scratch."""
    law = QATLaw({**EXAMPLE_QAT_PARAMS, "xi": xi})
    f = np.linspace(0, 1, 1001)
    for N, S, B in [(2e6, 20, 1), (3e7, 200, 4), (1e9, 1e4, 6)]:
        L = law.loss_at_fraction(N, S * N * B / 8, B, f)
        assert np.all(np.diff(L) < 0)
    lo = {n: lo for n, _lg, lo, *_ in QATLaw._spec}
    assert lo["xi"] == 0.0 and lo["omega"] == 0.0


# ---- JSON, loading, bad inputs ----------------------------------------------------------------
def test_json_round_trip(tmp_path):
    law = QATLaw(EXAMPLE_QAT_PARAMS)
    law.provenance = {"data_hash": "abc", "n_runs": 3}
    law.fit_report_ = {"converged": True}
    law.bootstrap_ = np.stack([law.x_, law.x_ + 0.01])
    law.bootstrap_info_ = {"n": 2, "level": 0.9}
    p = law.save(tmp_path / "law.json")
    back = load_law(p)
    assert isinstance(back, QATLaw) and back.params_ == pytest.approx(law.params_)
    np.testing.assert_allclose(back.bootstrap_, law.bootstrap_)
    assert back.provenance["data_hash"] == "abc" and back.converged
    assert back.predict(1e7, 1e9, 1e8, 4) == pytest.approx(law.predict(1e7, 1e9, 1e8, 4))
    pb = PerBitChinchilla({"E@4": 1.0, "A@4": 10.0, "alpha@4": 0.3, "B@4": 10.0, "beta@4": 0.3})
    back = load_law(pb.save(tmp_path / "pb.json"))
    assert back.groups == [4.0] and back.predict(1e7, 1e9, 0, 4) == pb.predict(1e7, 1e9, 0, 4)
    c = load_law(FractionClosedForm(5.5).save(tmp_path / "c.json"))
    assert c.a == 5.5
    (tmp_path / "bad.json").write_text(json.dumps({"law": "qat"}))
    with pytest.raises(ConfigError):
        load_law(tmp_path / "bad.json")
    with pytest.raises(ConfigError):
        load_law(tmp_path / "missing.json")


def test_predict_bad_inputs():
    law = QATLaw(EXAMPLE_QAT_PARAMS)
    with pytest.raises(ConfigError, match="N"):
        law.predict(0, 1e9, 0, 4)
    with pytest.raises(ConfigError, match="D"):
        law.predict(1e7, 0, 0, 4)
    with pytest.raises(ConfigError, match="D_fp"):
        law.predict(1e7, -1, 1e8, 4)
    with pytest.raises(ConfigError, match="bits"):
        law.predict(1e7, 1e9, 0, 9)
    with pytest.raises(ConfigError, match="law"):
        QATLaw().predict(1e7, 1e9, 0, 4)
    pb = PerBitChinchilla({"E@4": 1.0, "A@4": 10.0, "alpha@4": 0.3, "B@4": 10.0, "beta@4": 0.3})
    with pytest.raises(ConfigError, match="bits"):
        pb.predict(1e7, 1e9, 0, 2)


def test_fewer_runs_than_params():
    runs = Runs.from_records([{**REC, "N": 1e7 * (i + 1)} for i in range(10)])
    with pytest.raises(ConfigError) as e:
        QATLaw().fit(runs)
    assert e.value.field == "runs" and "16 parameters" in str(e.value)


def test_import_is_torch_free():
    import subprocess
    import sys

    code = (
        "import sys, coqat.law, coqat.plan, coqat.plan.cli; "
        "bad = [m for m in ('torch', 'scipy.optimize', 'matplotlib') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
