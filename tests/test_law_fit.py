"""Synthetic recovery, rivals, held-out validation, comparison, bootstrap coverage."""

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
    compare,
    holdout,
)
from coqat.law.synthetic import EXAMPLE_QAT_PARAMS, synthetic_runs
from coqat.plan import optimal_fraction, save_default

TRUE = QATLaw(EXAMPLE_QAT_PARAMS)
GRID = {"S_totals": (10, 30, 100, 300, 1000), "fractions": (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)}


@pytest.fixture(scope="module")
def runs():
    return synthetic_runs(TRUE, noise=0.005, seed=0, **GRID)


@pytest.fixture(scope="module")
def fitted(runs):
    return QATLaw().fit(runs, n_restarts=4, seed=0)


def test_synthetic_recovery(runs, fitted):
    rep = fitted.fit_report_
    assert rep["converged"]
    assert rep["mean_rel_err"] < 0.006  # ~ the 0.5% noise level
    # Tolerance: exponents within 20% (or 0.02 absolute for near-zero ones), coefficients looser;
    # what matters is predictions and optimal fractions.
    for k in ("alpha", "beta", "kappa", "chi", "omega", "mu", "xi"):
        assert fitted.params_[k] == pytest.approx(EXAMPLE_QAT_PARAMS[k], rel=0.2), k
    for k in ("psi", "nu", "rho"):
        assert abs(fitted.params_[k] - EXAMPLE_QAT_PARAMS[k]) < 0.03, k
    assert fitted.params_["E"] == pytest.approx(EXAMPLE_QAT_PARAMS["E"], rel=0.05)
    # noise-free predictions inside the fitted range within 0.5%
    clean = synthetic_runs(TRUE, noise=0.0, **GRID)
    rel = np.abs(fitted.predict_runs(clean) / clean.loss - 1)
    assert rel.max() < 0.005
    # optimal fractions recovered within 0.05
    for N, S, B in [(3e6, 20, 2), (1e7, 100, 4), (2.5e7, 800, 6), (5e6, 300, 1)]:
        D = S * N * B / 8
        f_true = optimal_fraction(TRUE, N, D, B, level=None)["f_opt"]
        f_fit = optimal_fraction(fitted, N, D, B, level=None)["f_opt"]
        assert abs(f_fit - f_true) < 0.05, (N, S, B, f_true, f_fit)
    prov = fitted.provenance
    assert prov["n_runs"] == len(runs) and len(prov["data_hash"]) == 16
    assert prov["fit_range"]["N"] == [2e6, 3e7]
    assert {"mae", "mean_rel_err", "max_rel_err"} <= set(prov["metrics"])


def test_fit_is_staged_and_reports_starts(fitted):
    labels = [s["label"] for s in fitted.fit_report_["starts"]]
    assert "stage:joint" in labels and labels.count("random") == 4
    assert fitted.fit_report_["n_converged"] >= 1


def test_ptq_runs_excluded_from_qat_fit(runs):
    ptq = Runs.from_records(
        [{"N": 1e7, "D_fp": 1e9, "D_qat": 0, "bits": 4, "loss": 9.0}] + runs.to_records()[:60]
    )
    law = QATLaw().fit(ptq, n_restarts=0, n_stage=1)
    assert law.fit_report_["n_excluded_ptq"] == 1


def test_non_converged_fit_is_not_saved_as_default(runs, tmp_path):
    law = QATLaw().fit(runs, n_restarts=0, n_stage=1, maxiter=2)
    assert law.fit_report_["converged"] is False
    with pytest.raises(ConfigError, match="converge"):
        save_default(law, tmp_path / "default.json")
    assert not (tmp_path / "default.json").exists()


@pytest.mark.slow
def test_rivals_fit_and_compare(runs):
    small = runs.filter(np.isin(runs.bits, [2, 4, 16]))
    for cls in (PerBitChinchilla, ChenQATLaw, KumarPrecisionLaw):
        law = cls().fit(small, n_restarts=2)
        assert law.fit_report_["mean_rel_err"] < 0.3, cls  # f-blind rivals fit worse
        assert np.isfinite(law.predict(1e7, 1e9, 1e8, 4))
    rows = compare(small, [QATLaw, PerBitChinchilla], "largest-N", n_restarts=1, n_stage=2)
    assert [r["law"] for r in rows][0] == "qat"  # the true law wins held out
    for r in rows:
        assert {"mae", "aic", "bic", "heldout_mean_rel_err", "k"} <= set(r)
    assert rows[0]["aic"] < rows[1]["aic"]


def test_holdout_report(runs):
    rep = holdout(runs, QATLaw, "largest-N", n_restarts=1, n_stage=2)
    assert rep["n_heldout"] == int(np.isclose(runs.N, 3e7).sum())
    assert rep["mean_rel_err"] < 0.01 and rep["max_rel_err"] < 0.03
    assert rep["compute_ratio"] > 1
    rep2 = holdout(runs, QATLaw, "S_total>=800 & bits<16", n_restarts=0, n_stage=2)
    assert rep2["n_heldout"] > 0 and rep2["mean_rel_err"] < 0.02
    with pytest.raises(ConfigError, match="holdout"):
        holdout(runs, QATLaw, "size>3")
    with pytest.raises(ConfigError, match="holdout"):
        holdout(runs, QATLaw, "N>1e12")


def test_closed_form_fit_runs(runs):
    c = FractionClosedForm().fit_runs(runs)
    assert 1 < c.a < 20 and c.fit_report_["converged"]
    assert c.provenance["n_pairs"] > 10


@pytest.mark.slow
def test_bootstrap_coverage_of_predictions():
    """90% percentile-bootstrap CIs for predictions cover the truth at ~the nominal rate.

    Small law (one-group Chinchilla, 5 params) on 40 FP runs with 0.5% noise; 12 replications
    x 3 query points (one interior, two extrapolated 2-3x in N or D); 40 resamples each. With 36
    intervals a coverage of 0.9 reads >= 0.75 unless 3 standard deviations off."""
    true = PerBitChinchilla(
        {"E@16": 1.8, "A@16": 150.0, "alpha@16": 0.3, "B@16": 150.0, "beta@16": 0.3}
    )
    N = np.repeat(np.geomspace(2e6, 3e7, 5), 8)
    D = np.tile(np.geomspace(5e7, 5e9, 8), 5)
    Q = [(6e6, 5e8), (8e7, 5e9), (3e7, 1.5e10)]
    hits, total = 0, 0
    for rep in range(12):
        rng = np.random.default_rng(100 + rep)
        y = true.predict(N, D, 0, 16) * np.exp(0.005 * rng.standard_normal(len(N)))
        runs = Runs(
            {"N": N, "D_fp": D, "D_qat": np.zeros_like(D), "bits": np.full(40, 16.0), "loss": y}
        )
        law = PerBitChinchilla().fit(runs, n_restarts=1, seed=rep)
        law.bootstrap(runs, n_boot=40, seed=rep)
        for n, d in Q:
            c = law.ci(lambda lw, n=n, d=d: lw.predict(n, d, 0, 16), level=0.9)
            t = true.predict(n, d, 0, 16)
            hits += c["lo"] <= t <= c["hi"]
            total += 1
    cov = hits / total
    print(f"coverage {cov:.3f} over {total} intervals")
    assert 0.75 <= cov <= 1.0, cov


def test_closed_form_fit_runs_keeps_schedules_and_variants_apart():
    from coqat.law import Runs

    f = np.array([0.1, 0.3, 0.6, 0.9])
    rows = []
    for sched, variant, fstar in (
        ("fused", "", 0.3),
        ("standard", "", 0.9),
        ("fused", "qat.cooldown=0.1", 0.9),
    ):
        for x in f:
            rows.append(
                {
                    "N": 1e7,
                    "D_fp": (1 - x) * 1e9,
                    "D_qat": x * 1e9,
                    "bits": 4.0,
                    "loss": 2 + (x - fstar) ** 2,
                    "schedule": sched,
                    "variant": variant,
                }
            )
    c = FractionClosedForm().fit_runs(Runs.from_records(rows))
    assert c.provenance["n_pairs"] == 3  # one f* per curve, not one for the mixed group
    mixed = [r for r in rows if r["schedule"] == "fused" and r["variant"] == ""]
    assert FractionClosedForm().fit_runs(Runs.from_records(mixed)).provenance["n_pairs"] == 1


def test_runs_where():
    from coqat.law import Runs

    rows = [
        {"N": 1e7, "D_fp": 1e9, "D_qat": q, "bits": b, "loss": 2.0, "schedule": s, "variant": v}
        for q, b, s, v in [
            (0, 16, "fused", ""),
            (1e8, 4, "fused", ""),
            (1e8, 4, "standard", ""),
            (2e8, 2, "fused", "qat.cooldown=0.1"),
        ]
    ]
    r = Runs.from_records(rows)
    assert len(r.where("schedule==fused")) == 3
    assert len(r.where("schedule==fused & variant==")) == 2
    assert len(r.where("variant==qat.cooldown=0.1")) == 1
    assert len(r.where("bits<16 & D_qat>=1e8")) == 3
    assert len(r.where("f>0.05 & schedule!=standard")) == 2
    for bad in ("bits<<4", "nope==1", "schedule>fused"):
        with pytest.raises(ConfigError, match="where"):
            r.where(bad)


def test_sized_closed_form(runs, tmp_path):
    """f = exp(-a / ln(S (N/1e7)^g)): g = 0 is the paper's form; a fit on exact triples recovers
    (a, g); fit_runs takes its triples from a runs table; JSON round trip; N is required."""
    import numpy as np

    from coqat.errors import ConfigError
    from coqat.law import SizedFractionClosedForm, load_law

    S = np.array([20.0, 80.0, 320.0, 1000.0, 80.0, 20.0])
    N = np.array([2e6, 4e6, 2e6, 2e6, 3e7, 9e7])
    assert SizedFractionClosedForm(6.7297, 0.0).predict_fraction(S, N) == pytest.approx(
        FractionClosedForm().predict_fraction(S)
    )
    f = SizedFractionClosedForm(4.0, 0.8).predict_fraction(S, N)
    law = SizedFractionClosedForm().fit(S, f, N=N)
    assert law.params_ == pytest.approx({"a": 4.0, "g": 0.8}, abs=1e-3)
    assert law.provenance["fit_range"]["N"] == [2e6, 9e7]
    back = load_law(law.save(tmp_path / "s.json"))
    assert type(back) is SizedFractionClosedForm and back.g == pytest.approx(law.g)
    assert back.optimal_fraction(4e6, 80 * 4e6 / 8, 1) == pytest.approx(f[1])
    with pytest.raises(ConfigError, match="N"):
        law.predict_fraction(S)
    with pytest.raises(ConfigError, match="N"):
        SizedFractionClosedForm().fit(S, f)
    c = SizedFractionClosedForm().fit_runs(runs)
    assert c.fit_report_["converged"] and c.provenance["n_pairs"] > 10
    assert c.fit_report_["mae"] <= FractionClosedForm().fit_runs(runs).fit_report_["mae"] + 1e-6
