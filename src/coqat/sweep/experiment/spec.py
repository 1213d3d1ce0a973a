"""An experiment folder's ``analysis.yaml``: what ``coqat report --experiment DIR`` analyses.

Paths are relative to the folder. Every key is optional except where noted; unknown keys and bad
values raise a ConfigError naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coqat.config import check, from_dict, load_file

SPEC_FILE = "analysis.yaml"


@dataclass(frozen=True)
class NoiseSpec:
    """Run-to-run noise for the f* intervals (``coqat.law.analysis.StepNoise``): ``steps_sd``
    = [[steps, sd], ...] measured in the experiment, ``sd_f1`` the floor at f = 1; ``draws`` of
    the parametric bootstrap from ``seed``."""

    steps_sd: tuple[tuple[float, float], ...] = ()
    sd_f1: float = 0.0
    draws: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for p in self.steps_sd:
            check(len(p) == 2 and p[0] > 0 and p[1] > 0, "noise.steps_sd",
                  f"each entry is [steps, sd] with both > 0, got {list(p)}")
        check(self.draws >= 10, "noise.draws", "must be >= 10")

    def model(self) -> Any:
        """The noise model these settings describe (``coqat.law.analysis.StepNoise``)."""
        from coqat.law.analysis import StepNoise

        return StepNoise(tuple(tuple(p) for p in self.steps_sd), self.sd_f1)


@dataclass(frozen=True)
class DesignSpec:
    """The designed grids (``coqat.sweep.experiment.design``): the calls that ran them, the
    reference grid (``reference_size`` at ``fixed_tokens`` tokens and ``tokens_per_step``, the
    whole train split of ``train_split_tokens`` tokens, decay ``basis``; without a
    ``reference_size`` no one-factor contrasts), the prediction files written before the runs,
    what counts as a hit, and how the default rule is chosen and written (``compare_rules``:
    false for a check that fits nothing, e.g. on another corpus). ``figure``: a file name under
    the experiment's figures for the design's curves with the pre-registered fractions;
    ``compare_with``: label -> another experiment folder whose pre-registered rules, scored on
    its own grids, the summary shows beside these (``coqat.sweep.experiment.crosscheck``)."""

    calls: tuple[str, ...] = ()
    min_fractions: int = 4
    fixed_tokens: int = 0
    tokens_per_step: int = 65536
    train_split_tokens: int = 0
    reference_size: str = ""
    basis: str = "fixed"  # the design's decay (the value of ExperimentSpec.basis)
    other_basis: str = "total"  # the decay it is compared with at small fractions
    default_basis: str = "total"  # RunConfig's default of ExperimentSpec.basis
    predictions: tuple[str, ...] = ()
    hit: float = 0.1  # a prediction hits when |f_pred - f*| <= hit
    rule_bases: tuple[str, ...] = ("total",)  # earlier grids that join the rule comparison
    largest: int = 1  # the largest sizes held out together in the "largest" split
    boot: int = 200  # bootstrap resamples of the grids for the default rule's interval
    handover_decades: float = 1.0  # the default hands over to the paper's rule over this
    default_rule: str = ""  # where the default rule's JSON is written
    compare_rules: bool = True  # compare the fraction rules on held-out grids, choose a default
    figure: str = ""
    compare_with: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.compare_rules or not self.default_rule, "design.default_rule",
              "needs design.compare_rules: true (the rule comparison chooses the default)")
        check(self.min_fractions >= 3, "design.min_fractions", "must be >= 3")
        check(0 < self.hit < 1, "design.hit", "must be in (0, 1)")
        check(self.handover_decades > 0, "design.handover_decades", "must be > 0")
        check(self.largest >= 1, "design.largest", "must be >= 1")


@dataclass(frozen=True)
class ExperimentSpec:
    """See the module doc and experiments/reference/analysis.yaml for an example."""

    store: str = "results.sqlite"
    template: str = "README.in.md"
    readme: str = "README.md"
    summary: str = "summary.json"
    figures: str = "figures"
    manifest: str = ""  # the prepared data's manifest.json (its token counts), optional
    min_steps: int = 600  # fewer optimizer steps: step-starved (flagged, left out of fits)
    min_fractions: int = 6  # fractions a grid needs for an f* row
    baseline: float = 0.1  # the fixed-fraction rule ("10% rule") the regrets compare against
    basis: str = "qat.cooldown_of"  # the setting that splits the analysis (an axis, not a knob)
    bases: tuple[str, ...] = ()  # its values, in the order of the tables
    knobs: dict[str, Any] = field(default_factory=dict)  # setting -> its default (knob studies)
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    laws: tuple[str, ...] = ("qat", "per-bit-chinchilla", "chen", "kumar")
    holdout: dict[str, str] = field(default_factory=dict)  # name -> holdout rule
    large_N: float = 2e7  # sizes from here on: predicted by a QATLaw fitted on the smaller
    huber_deltas: tuple[float, ...] = ()
    shipped_law: str = ""  # a law JSON (or shipped name) fitted from law_runs: its optimum's CI
    law_runs: dict[str, str] = field(default_factory=dict)  # basis -> CSV written for `coqat fit`
    fraction_law: str = ""  # where the sized closed form fitted on the first basis is written
    fraction_law_basis: str = ""
    # closed forms (coqat.law.analysis.refits forms: refit_a, sized, tokens_per_bit) fitted on
    # the same f* rows, with bootstrap intervals over grids: form -> where its JSON is written
    fraction_rules: dict[str, str] = field(default_factory=dict)
    fraction_rules_boot: int = 200
    predictions: str = ""  # a memory-budget prediction recorded before its runs
    predictions_basis: str = ""  # the basis of the runs that check it
    calls: str = ""  # per call: wall time, workers, command (results/calls.json)
    bench: tuple[str, ...] = ()  # single-process throughput JSON files (bench/results)
    queries: tuple[dict[str, Any], ...] = ()  # planner questions answered with shipped_law
    design: DesignSpec = field(default_factory=DesignSpec)  # the designed grids, if any

    def __post_init__(self) -> None:
        check(self.min_steps >= 0, "min_steps", "must be >= 0")
        check(self.min_fractions >= 3, "min_fractions", "must be >= 3")
        check(0 <= self.baseline <= 1, "baseline", "must be in [0, 1]")
        from coqat.law.analysis.refits import FORMS

        for form in self.fraction_rules:
            check(form in FORMS and form not in ("paper", "tokens_per_param"), "fraction_rules",
                  f"unknown form {form!r}; choose from ['refit_a', 'sized', 'tokens_per_bit']")
        for q in self.queries:
            check(isinstance(q, dict) and set(q) == {"N", "D", "bits"}, "queries",
                  f"each query is {{N, D, bits}}, got {q!r}")


def load_experiment(folder: str | Path) -> tuple[Path, ExperimentSpec]:
    """(folder, spec) from ``folder/analysis.yaml``."""
    from coqat.errors import ConfigError

    folder = Path(folder)
    p = folder / SPEC_FILE
    if not p.is_file():
        raise ConfigError("--experiment", f"{p} does not exist (an experiment folder has one)")
    return folder, from_dict(ExperimentSpec, load_file(p))
