"""The quickstart's reading of its grid: the measured optimum, the seeds' agreement, the
paired margins and the planner's fraction (synthetic results; the run itself is smoke-tested
in test_export_run.py)."""

from __future__ import annotations

import pytest


def _results(losses, seeds=(0, 1), fractions=(0.0, 0.1, 0.3, 0.6, 1.0)):
    from coqat.train.quickstart import Quickstart

    q = Quickstart(seeds=seeds, fractions=fractions)
    res = {}
    for i, s in enumerate(seeds):
        res[s] = {}
        for j, f in enumerate(fractions):
            res[s][f] = {
                "loss": losses[i][j], "loss_fp": 3.0 + 0.01 * i, "D_fp": 0 if f == 1 else 1,
                "N": 139_584, "D_total": 512_000, "S_total": 512_000 / (139_584 * 2 / 8),
            }  # fmt: skip
    return q, res


def test_interior_optimum_both_seeds():
    from coqat.train.quickstart import summarize

    q, res = _results([[3.30, 3.20, 3.18, 3.19, 3.22], [3.32, 3.24, 3.22, 3.23, 3.25]])
    sm = summarize(q, res)
    assert sm["f_best"] == 0.3 and sm["seeds_agree"] and sm["interior"]
    assert sm["margins"][0.1] == pytest.approx([0.02, 0.02])
    assert sm["loss_fp16"] == pytest.approx(3.005)
    assert sm["f_hat"] == pytest.approx(0.0816, abs=1e-3)  # the paper's closed form at S = 14.7
    assert sm["tied"] == [0.3] and not sm["f_hat_in_tied"]


def test_seeds_that_disagree_are_reported():
    from coqat.train.quickstart import summarize

    q, res = _results([[3.30, 3.20, 3.18, 3.19, 3.22], [3.32, 3.24, 3.22, 3.23, 3.20]])
    sm = summarize(q, res)
    assert sm["f_best_per_seed"] == [0.3, 1.0] and not sm["seeds_agree"]
    assert sm["tied"] == [0.3, 1.0]


def test_tied_fractions_and_the_planner():
    from coqat.train.quickstart import summarize

    q, res = _results([[3.30, 3.19, 3.20, 3.23, 3.27], [3.30, 3.213, 3.212, 3.217, 3.25]])
    sm = summarize(q, res)
    assert sm["tied"] == [0.1, 0.3] and sm["f_hat_in_tied"]  # f_hat = 0.08 is nearest 0.1
