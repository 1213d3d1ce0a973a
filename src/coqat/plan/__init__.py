"""QAT planner: optimal FP/QAT split, bit width under a memory budget, FP-equivalent size.

Pure numpy; imports neither torch nor scipy.optimize (see ``coqat.plan._opt``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from coqat.errors import ConfigError
from coqat.plan.planner import (
    best_under_memory,
    fp_equivalent,
    loss_curve,
    optimal_fraction,
    range_warnings,
    token_equivalent,
)

DEFAULT_LAW_ENV = "COQAT_DEFAULT_LAW"


def default_law_path() -> Path:
    """``$COQAT_DEFAULT_LAW`` if set, else the shipped ``coqat/law/defaults/default.json``."""
    env = os.environ.get(DEFAULT_LAW_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "law" / "defaults" / "default.json"


def default_law() -> Any:
    """The default law: the paper's closed form alone (``coqat.law.PAPER_SOURCE``), until a
    reference fit predicts the optimum, not just the loss (experiments/reference/README.md, 2.)."""
    from coqat.law.registry import load_law

    p = default_law_path()
    if not p.is_file():
        from coqat.law.closed_form import FractionClosedForm

        return FractionClosedForm()
    return load_law(p)


SHIPPED_DIR = Path(__file__).resolve().parent.parent / "law" / "defaults"


def shipped_laws() -> list[str]:
    """Names of the law JSON files shipped with coqat (``coqat plan --law NAME``)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))


def load_law(path: str | Path) -> Any:
    """A law from a JSON path, or from the name of a shipped law (``reference-linux-c``:
    the reference experiment's small-scale QATLaw fit; ``default``: the default law)."""
    from coqat.law.registry import load_law as _load

    p = Path(path)
    if not p.is_file() and (SHIPPED_DIR / f"{path}.json").is_file():
        p = SHIPPED_DIR / f"{path}.json"
    if not p.is_file():
        raise ConfigError(
            "law", f"{str(path)!r} is neither a law JSON file nor a shipped law {shipped_laws()}"
        )
    return _load(p)


def save_default(law: Any, path: str | Path | None = None) -> Path:
    """Save ``law`` as the default law; refuses a fit that did not converge."""
    if not getattr(law, "converged", False):
        raise ConfigError(
            "law",
            "refusing to save a fit that did not converge as the default "
            "(fit_report.converged is false); inspect the fit, add runs or starts",
        )
    return law.save(Path(path) if path is not None else default_law_path())


__all__ = [
    "best_under_memory",
    "default_law",
    "default_law_path",
    "fp_equivalent",
    "load_law",
    "loss_curve",
    "optimal_fraction",
    "range_warnings",
    "save_default",
    "token_equivalent",
]
