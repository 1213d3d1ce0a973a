"""Batched planning: a law and its bootstrap samples evaluated together give what evaluating them
one law at a time gives (the planner's intervals in one vectorized pass)."""

import numpy as np
import pytest

from coqat.law import QATLaw
from coqat.law.laws import ChenQATLaw, KumarPrecisionLaw, PerBitChinchilla
from coqat.law.synthetic import EXAMPLE_QAT_PARAMS
from coqat.plan import fp_equivalent, optimal_fraction, token_equivalent
from coqat.plan._opt import minimize_bounded, minimize_bounded_rows, root_log, root_log_rows
from coqat.plan.planner import loss_curve


@pytest.fixture(scope="module")
def law():
    lw = QATLaw(EXAMPLE_QAT_PARAMS)
    rng = np.random.default_rng(0)
    lw.bootstrap_ = lw.x_ + rng.normal(0, 0.02, (24, lw.n_params))
    lw.bootstrap_info_ = {"n": 24, "level": 0.9}
    return lw


def _other_laws():
    rng = np.random.default_rng(1)
    chen = ChenQATLaw().with_x(np.array([0.5, 6.0, 0.35, 7.0, 0.3, -3.0, 0.8, 0.1, 0.2]))
    kumar = KumarPrecisionLaw().with_x(
        np.array([0.5, 6.0, 0.35, 7.0, 0.3, 1.5, -2.0, 0.1, 0.2, 1.0])
    )
    pb = PerBitChinchilla(groups=[4.0, 16.0])
    pb = pb.with_x(np.tile([0.5, 6.0, 0.35, 7.0, 0.3], 2))
    return [(lw, lw.x_ + rng.normal(0, 0.01, (5, lw.n_params))) for lw in (chen, kumar, pb)]


def test_predict_samples_equals_one_law_at_a_time(law):
    X = law.samples_x()
    assert X.shape == (25, law.n_params) and np.array_equal(X[0], law.x_)
    f = np.linspace(0, 1, 9)
    P = law.predict_samples(X, 1e7, (1 - f) * 1e9, f * 1e9, 4)
    R = np.stack([law.with_x(x).predict(1e7, (1 - f) * 1e9, f * 1e9, 4) for x in X])
    # equal up to the exp/log round trip of with_x's natural parameters
    assert P.shape == (25, 9)
    np.testing.assert_allclose(P, R, rtol=1e-13)
    rows = np.random.default_rng(2).uniform(0, 1, (25, 3))  # row s at its own fractions
    P = law.predict_samples(X, 1e7, (1 - rows) * 1e9, rows * 1e9, 2)
    for s in (0, 7, 24):
        R = law.with_x(X[s]).predict(1e7, (1 - rows[s]) * 1e9, rows[s] * 1e9, 2)
        np.testing.assert_allclose(P[s], R, rtol=1e-13)
    for lw, Xo in _other_laws():  # broadcasting laws and the one-at-a-time fallback
        P = lw.predict_samples(Xo, [3e6, 3e7], 1e9, [0.0, 2e8], 4)
        R = np.stack([lw.with_x(x).predict([3e6, 3e7], 1e9, [0.0, 2e8], 4) for x in Xo])
        np.testing.assert_allclose(P, R, rtol=1e-13)
    with pytest.raises(ValueError, match="broadcast"):
        law.predict_samples(X, np.ones((3, 2)) * 1e7, 1e9, 0, 4)


def test_row_solvers_follow_the_scalar_ones():
    centers = np.array([-0.2, 0.0, 0.013, 0.37, 0.5, 0.999, 1.0, 1.7])

    def fmat(F):
        return (F - centers[:, None]) ** 2 + 0.1 * np.cos(7 * F)

    x, y = minimize_bounded_rows(fmat, len(centers))
    for r, c in enumerate(centers):
        xs, ys = minimize_bounded(lambda t, c=c: (t - c) ** 2 + 0.1 * np.cos(7 * t))
        assert x[r] == pytest.approx(xs, abs=1e-12) and y[r] == pytest.approx(ys, abs=1e-14)
    targets = np.array([3.0, 1e5, 7.7e12, 1e3, 1e18, -1.0, 1e20])

    def g(v):
        return np.log(v) - np.log(np.abs(targets))

    roots = root_log_rows(lambda v: g(v) * np.sign(targets), len(targets), 1e3, 1e18)
    for r, t in enumerate(targets):
        ref = root_log(lambda v, t=t: (np.log(v) - np.log(abs(t))) * np.sign(t), 1e3, 1e18)
        if np.isnan(ref):
            assert np.isnan(roots[r])
        else:
            assert roots[r] == pytest.approx(ref, rel=1e-12)
    assert np.isnan(roots[[0, 5, 6]]).all() and roots[3] == 1e3 and roots[4] == 1e18


def _scalar_quantities(N, D, b, baseline=0.1):
    """The planner's quantities computed one law at a time (the unbatched definition)."""

    def q(lw):
        f, L = minimize_bounded(lambda f: lw.loss_at_fraction(N, D, b, f))
        Lb = float(lw.loss_at_fraction(N, D, b, baseline))
        Db = token_equivalent(lw, L, N, b, baseline)
        return np.array([f, L, Lb, Lb - L, Db / D - 1.0])

    return q


@pytest.mark.parametrize("N,D,b", [(1e7, 1e9, 4), (3e6, 2e7, 2), (1e8, 1e12, 6)])
def test_optimal_fraction_interval_equals_law_ci(law, N, D, b):
    r = optimal_fraction(law, N, D, b, level=0.8)
    c = law.ci(_scalar_quantities(N, D, b), 0.8)
    names = ["f_opt", "loss_opt", "loss_baseline", "regret_loss", "extra_tokens"]
    for i, n in enumerate(names):
        assert r[n] == pytest.approx(c["value"][i], rel=1e-7, abs=1e-9), n
        for got, want in zip(r[n + "_ci"], (c["lo"][i], c["hi"][i])):
            assert got == pytest.approx(want, rel=1e-7, abs=1e-9), n
    assert r["n_boot"] == c["n"] == 24


def test_fp_equivalent_and_loss_curve_intervals(law):
    e = fp_equivalent(law, 1e7, 1e9, 4, 0.3, level=0.9)

    def nfp(lw):
        Lq = float(lw.loss_at_fraction(1e7, 1e9, 4, 0.3))
        return root_log(lambda n: float(lw.predict(n, 1e9, 0.0, 16)) - Lq, 1e1, 1e10)

    c = law.ci(nfp, 0.9)
    assert e["N_fp"] == pytest.approx(c["value"], rel=1e-9)
    assert e["N_fp_ci"] == pytest.approx([c["lo"], c["hi"]], rel=1e-9)
    curve = loss_curve(law, 1e7, 1e9, 4, n=11, level=0.9)
    ref = law.ci(lambda lw: lw.loss_at_fraction(1e7, 1e9, 4, np.linspace(0, 1, 11)), 0.9)
    np.testing.assert_allclose(curve["lo"], ref["lo"], rtol=1e-12)
    np.testing.assert_allclose(curve["loss"], ref["value"], rtol=1e-12)
