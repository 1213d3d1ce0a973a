"""Scaling laws for QAT: runs tables, loss laws, fitting, bootstrap and validation.

Pure numpy (scipy.optimize is imported lazily inside the fitting functions); never imports torch.
"""

from coqat.law.base import Law, features
from coqat.law.closed_form import (
    PAPER_A,
    PAPER_SOURCE,
    FractionClosedForm,
    SizedFractionClosedForm,
    TokensPerBitClosedForm,
)
from coqat.law.laws import ChenQATLaw, KumarPrecisionLaw, PerBitChinchilla, QATLaw
from coqat.law.registry import FRACTION_RULES, LAWS, LOSS_LAWS, law_class, load_law
from coqat.law.runs import ALLOWED_BITS, REQUIRED, Runs

LAW_CHOICES = LAWS  # the same registry under its older name


def fit_law(law, runs, **settings):
    from coqat.law.fit import fit_law as _fit

    return _fit(law, runs, **settings)


def bootstrap(law, runs, n_boot=200, **settings):
    from coqat.law.bootstrap import bootstrap as _b

    return _b(law, runs, n_boot=n_boot, **settings)


def holdout(runs, law_cls, rule="largest-N", **settings):
    from coqat.law.validate import holdout as _h

    return _h(runs, law_cls, rule, **settings)


def compare(runs, law_classes, rule="largest-N", **settings):
    from coqat.law.validate import compare as _c

    return _c(runs, law_classes, rule, **settings)


__all__ = [
    "ALLOWED_BITS",
    "FRACTION_RULES",
    "LAWS",
    "LOSS_LAWS",
    "LAW_CHOICES",
    "PAPER_A",
    "PAPER_SOURCE",
    "REQUIRED",
    "ChenQATLaw",
    "FractionClosedForm",
    "SizedFractionClosedForm",
    "TokensPerBitClosedForm",
    "KumarPrecisionLaw",
    "Law",
    "PerBitChinchilla",
    "QATLaw",
    "Runs",
    "bootstrap",
    "compare",
    "features",
    "fit_law",
    "holdout",
    "law_class",
    "load_law",
]
