"""The law registry: every law coqat knows, by the name its JSON files and ``coqat fit --law``
use. The one list: ``coqat.law.LAWS``, ``coqat fit`` and :func:`load_law` read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coqat.errors import ConfigError
from coqat.law.closed_form import (
    FractionClosedForm,
    SizedFractionClosedForm,
    TokensPerBitClosedForm,
)
from coqat.law.handover import HandoverRule
from coqat.law.laws import ChenQATLaw, KumarPrecisionLaw, PerBitChinchilla, QATLaw
from coqat.law.record import FORMAT

#: laws that predict the loss L(N, D_fp, D_qat, bits)
LOSS_LAWS: dict[str, type] = {
    c.name: c for c in (QATLaw, PerBitChinchilla, ChenQATLaw, KumarPrecisionLaw)
}
#: rules that predict only the loss-optimal QAT fraction
FRACTION_RULES: dict[str, type] = {
    c.name: c
    for c in (FractionClosedForm, SizedFractionClosedForm, TokensPerBitClosedForm, HandoverRule)
}
#: every law, by name
LAWS: dict[str, type] = {**LOSS_LAWS, **FRACTION_RULES}


def law_class(name: str) -> type:
    """The class of the law called ``name``; ConfigError naming the known ones otherwise."""
    try:
        return LAWS[name]
    except (KeyError, TypeError):
        raise ConfigError("law", f"unknown law {name!r}; known: {sorted(LAWS)}") from None


def load_law(path_or_dict: Any) -> Any:
    """Load any law (loss law or fraction rule) from a JSON file or dict."""
    d = path_or_dict
    if isinstance(d, str | Path):
        p = Path(d)
        if not p.is_file():
            raise ConfigError("law", f"file not found: {p}")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError("law", f"{p}: invalid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ConfigError("law", f"not a coqat law file (expected format {FORMAT!r})")
    cls = law_class(d.get("law"))
    return cls.from_json(d, load_law) if getattr(cls, "nested", False) else cls.from_json(d)
