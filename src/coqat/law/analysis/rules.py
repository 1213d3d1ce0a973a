"""Fraction rules compared on held-out grids, and the choice of the planner's default.

A *form* is a closed-form fraction rule fitted on measured optima (:mod:`coqat.law.closed_form`):

* ``paper``: ``f = exp(-a / ln S_total)`` with the paper's a (nothing fitted);
* ``refit_a``: the same with a refitted;
* ``tokens_per_bit``: ``x = D / (bits k)`` instead of S_total, a refitted (N drops out);
* ``sized``: ``x = S_total (N / 1e7)^g``, a and g fitted.

Each is fitted by MAE on (S_total, N, f*) of the training grids and scored on held-out grids by
the MAE of its fraction against the measured optimum and by its **regret**: the nats lost at its
fraction on the measured loss-vs-f curve (:meth:`coqat.law.analysis.Grid.regret`). Two splits:
``leave-one-size-out`` (each model size predicted by the form fitted on the other sizes) and
``largest`` (the largest sizes predicted from the smaller ones). :func:`choose_rule` picks the
form with the lowest held-out regret, averaged over the splits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from coqat.law.closed_form import (
    FractionClosedForm,
    SizedFractionClosedForm,
    TokensPerBitClosedForm,
)

RULE_FORMS = ("paper", "refit_a", "tokens_per_bit", "sized")
N_PARAMS = {"paper": 0, "refit_a": 1, "tokens_per_bit": 1, "sized": 2}


def _triples(gs: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    S = np.array([g.S_total for g in gs], float)
    N = np.array([g.N for g in gs], float)
    f = np.array([g.optimum()["f_refined"] for g in gs], float)
    return S, N, f


def fit_form(form: str, gs: list[Any], n_boot: int = 0, seed: int = 0) -> Any:
    """``form`` fitted by MAE on the optima of the grids ``gs`` (``paper``: the paper's rule);
    with ``n_boot`` bootstrap resamples of the grids (the rule's interval)."""
    if form == "paper":
        return FractionClosedForm()
    S, N, f = _triples(gs)
    if form == "refit_a":
        law: Any = FractionClosedForm().fit(S, f)
    elif form == "tokens_per_bit":
        law = TokensPerBitClosedForm().fit(S, f, N=N)
    elif form == "sized":
        law = SizedFractionClosedForm().fit(S, f, N=N)
    else:
        raise ValueError(f"form: {form!r} is not allowed; choose one of {list(RULE_FORMS)}")
    if n_boot:
        law.bootstrap(S, N, f, n_boot=n_boot, seed=seed)
    return law


def score(rule: Any, gs: list[Any]) -> dict[str, Any]:
    """MAE of the rule's fraction against each grid's refined optimum, and its regret (mean,
    max, nats) on the grids' curves; ``n_outside``: grids where its fraction lies outside the
    measured fractions (the regret there is read at the nearest end: a lower bound)."""
    if not gs:
        return {"n": 0, "mae": None, "mean_regret": None, "max_regret": None, "n_outside": 0}
    d = [g.regret(rule) for g in gs]
    fs = np.array([g.optimum()["f_refined"] for g in gs], float)
    fr = np.array([x["f_rule"] for x in d], float)
    rg = np.array([x["regret"] for x in d], float)
    return {
        "n": len(gs),
        "mae": float(np.mean(np.abs(fr - fs))),
        "mean_regret": float(np.mean(rg)),
        "max_regret": float(np.max(rg)),
        "n_outside": int(sum(x["outside"] for x in d)),
    }


def _size_of(g: Any) -> float:
    return round(g.N)


def splits(gs: list[Any], largest: int = 1) -> dict[str, list[tuple[list[int], list[int]]]]:
    """Train/test index lists of the two held-out schemes: ``leave-one-size-out`` (one split
    per distinct N) and ``largest`` (the ``largest`` largest sizes held out together)."""
    sizes = sorted({_size_of(g) for g in gs})
    idx = list(range(len(gs)))
    loso = [([i for i in idx if _size_of(gs[i]) != n], [i for i in idx if _size_of(gs[i]) == n])
            for n in sizes]
    big = set(sizes[-largest:]) if largest else set()
    lar = [([i for i in idx if _size_of(gs[i]) not in big],
            [i for i in idx if _size_of(gs[i]) in big])]
    return {"leave-one-size-out": loso, "largest": lar}


def heldout_scores(
    gs: list[Any],
    forms: tuple[str, ...] = RULE_FORMS,
    largest: int = 1,
    fit: Callable[[str, list[Any]], Any] = fit_form,
) -> dict[str, dict[str, dict[str, Any]]]:
    """{split: {form: score}}: every form fitted on each split's training grids and scored on
    its held-out grids, the held-out scores pooled over the split's folds (:func:`score` of
    the pooled grids, each predicted by the fold that held it out). A fold whose training
    grids are too few for a form (fewer than its parameters + 1) is skipped for that form."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, folds in splits(gs, largest).items():
        out[name] = {}
        for form in forms:
            regrets, errs, outside, n = [], [], 0, 0
            for train, test in folds:
                if not test or len(train) < N_PARAMS[form] + 1:
                    continue
                rule = fit(form, [gs[i] for i in train])
                for i in test:
                    d = gs[i].regret(rule)
                    regrets.append(d["regret"])
                    errs.append(abs(d["f_rule"] - gs[i].optimum()["f_refined"]))
                    outside += int(d["outside"])
                    n += 1
            out[name][form] = {
                "n": n,
                "mae": float(np.mean(errs)) if errs else None,
                "mean_regret": float(np.mean(regrets)) if regrets else None,
                "max_regret": float(np.max(regrets)) if regrets else None,
                "n_outside": outside,
            }
    return out


def choose_rule(heldout: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The form with the lowest held-out regret averaged over the splits (ties: the lower
    MAE, then fewer parameters), with the averages it was chosen on."""
    forms = sorted({f for sc in heldout.values() for f in sc})
    table = {}
    for f in forms:
        rg = [sc[f]["mean_regret"] for sc in heldout.values() if sc.get(f, {}).get("n")]
        ma = [sc[f]["mae"] for sc in heldout.values() if sc.get(f, {}).get("n")]
        if len(rg) == len(heldout):
            table[f] = {"mean_regret": float(np.mean(rg)), "mae": float(np.mean(ma))}
    if not table:
        raise ValueError("heldout: no form was scored on every split")
    best = min(table, key=lambda f: (round(table[f]["mean_regret"], 6),
                                     round(table[f]["mae"], 6), N_PARAMS[f], f))
    return {"form": best, "by_form": table}
