"""Analysis of measured QAT runs (numpy/scipy only; never imports torch).

What the report and the experiments compute from finished runs:

* measured curves and optima: :func:`grids` (one curve per configuration, runs of one call),
  :func:`fstar_table`, :func:`seed_spread` (mean and sd over seeds per fraction), :data:`MIN_STEPS`
  (step-starved runs are flagged and left out of fits);
* regret in nats of any fraction rule on a measured curve: :func:`regret`,
  :func:`regret_detail`, :func:`rule_summary` (MAE and regret of several rules over grids);
* closed forms refitted on measured optima, with leave-one-out errors: :func:`closed_form_refits`
  (:func:`degenerate_refit`: when a refit is no fit);
* noise: :func:`spread`, :func:`repeat_groups`, :class:`StepNoise`, :func:`fstar_bootstrap`;
* paired comparisons (fused vs standard, knobs): :func:`pair_runs`, :func:`fusion_pairs`,
  :func:`diff_stats`;
* loss laws: :func:`law_runs`, :func:`fit_summary`, :func:`heldout_comparison`.

A rule is a fraction, an object with ``optimal_fraction(N=..., D=..., bits=...)`` or a callable
with those keyword arguments::

    from coqat.law import FractionClosedForm
    from coqat.law.analysis import grids, fstar_table, rule_summary
    rows = fstar_table(grids(records), rules={"paper": FractionClosedForm(), "ten": 0.1})
    rule_summary(rows, ["paper", "ten"])   # MAE vs f* and regret (nats) per rule
"""

from coqat.law.analysis.grids import (
    GRID_AXES,
    MIN_STEPS,
    Grid,
    call_of,
    fstar_row,
    fstar_table,
    grids,
    representative_call,
    representatives,
    rule_summary,
    seed_means,
    seed_spread,
    step_starved,
)
from coqat.law.analysis.heldout import (
    fit_summary,
    heldout_comparison,
    law_runs,
    params_at_bounds,
    without_ptq,
)
from coqat.law.analysis.noise import (
    StepNoise,
    diff_stats,
    fstar_bootstrap,
    interval,
    pooled_sd,
    repeat_groups,
    spread,
)
from coqat.law.analysis.pairs import fusion_pairs, pair_runs
from coqat.law.analysis.refits import (
    FORMS,
    closed_form_refits,
    degenerate_refit,
    leave_one_out,
    mae,
)
from coqat.law.analysis.regret import regret, regret_detail, rule_fraction
from coqat.law.optimum import measured_loss_at, measured_optimum

__all__ = [
    "FORMS",
    "GRID_AXES",
    "MIN_STEPS",
    "Grid",
    "StepNoise",
    "call_of",
    "closed_form_refits",
    "degenerate_refit",
    "diff_stats",
    "fit_summary",
    "fstar_bootstrap",
    "fstar_row",
    "fstar_table",
    "fusion_pairs",
    "grids",
    "heldout_comparison",
    "interval",
    "law_runs",
    "leave_one_out",
    "mae",
    "measured_loss_at",
    "measured_optimum",
    "pair_runs",
    "params_at_bounds",
    "pooled_sd",
    "regret",
    "regret_detail",
    "repeat_groups",
    "representative_call",
    "representatives",
    "rule_fraction",
    "rule_summary",
    "seed_means",
    "seed_spread",
    "spread",
    "step_starved",
    "without_ptq",
]
