"""A fraction rule measured on a range of model sizes that hands over to another rule beyond it.

``HandoverRule(inner, outer, N_lo, N_hi)`` predicts with ``inner`` (a rule fitted where coqat has
measurements) up to ``N_lo`` parameters, with ``outer`` (the paper's rule, fitted on 86M-2.2B) from
``N_hi`` on, and blends the two linearly in log N in between:

    f = w f_inner + (1 - w) f_outer,   w = clip(ln(N_hi / N) / ln(N_hi / N_lo), 0, 1)

so the prediction is continuous in N and says, at every size, whose evidence it rests on
(:meth:`basis`). ``evidence`` carries what chose the inner rule (its held-out error and regret,
the range it was measured on); the planner prints it beside every answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from coqat.errors import ConfigError


class HandoverRule:
    name = "handover"
    depends_on_fraction = True
    nested = True  # its JSON holds other rules: coqat.law.load_law passes itself to from_json

    def __init__(
        self,
        inner: Any,
        outer: Any,
        N_lo: float,
        N_hi: float,
        evidence: dict[str, Any] | None = None,
        source: str | None = None,
    ):
        if not (np.isfinite(N_lo) and np.isfinite(N_hi) and 0 < N_lo < N_hi):
            raise ConfigError("N_lo", f"need 0 < N_lo < N_hi, got N_lo={N_lo!r}, N_hi={N_hi!r}")
        self.inner, self.outer = inner, outer
        self.N_lo, self.N_hi = float(N_lo), float(N_hi)
        self.evidence = dict(evidence or {})
        self.provenance: dict[str, Any] = {
            "source": source
            or f"{inner.name} up to {N_lo:.3g} parameters, {outer.name} from {N_hi:.3g}",
        }
        self.fit_report_ = {"converged": bool(getattr(inner, "converged", True))}
        self.params_ = {"N_lo": self.N_lo, "N_hi": self.N_hi}
        self.bootstrap_info_ = dict(getattr(inner, "bootstrap_info_", {}) or {})  # the interval

    @property
    def converged(self) -> bool:
        return bool(self.fit_report_.get("converged"))

    def weight(self, N: Any) -> Any:
        """The inner rule's weight at N: 1 up to N_lo, 0 from N_hi, linear in ln N between."""
        N = np.asarray(N, float)
        w = np.clip(np.log(self.N_hi / N) / np.log(self.N_hi / self.N_lo), 0.0, 1.0)
        return float(w) if w.ndim == 0 else w

    def basis(self, N: float) -> str:
        """Whose evidence the prediction at N rests on, in words."""
        w = self.weight(N)
        if w >= 1:
            return f"{self.inner.name} (inside its measured range, N <= {self.N_lo:.3g})"
        if w <= 0:
            return f"{self.outer.name} (N >= {self.N_hi:.3g}: only the paper measured here)"
        return (
            f"hand-over: {w:.0%} {self.inner.name} + {1 - w:.0%} {self.outer.name} "
            f"(N between {self.N_lo:.3g} and {self.N_hi:.3g})"
        )

    def optimal_fraction(self, N: Any, D: Any, bits: Any) -> Any:
        w = self.weight(N)
        fi = self.inner.optimal_fraction(N, D, bits)
        fo = self.outer.optimal_fraction(N, D, bits)
        return w * np.asarray(fi) + (1 - w) * np.asarray(fo) if np.ndim(w) else (
            w * fi + (1 - w) * fo
        )

    def fraction_ci(self, N: Any, D: Any, bits: Any, level: float = 0.9) -> list[float] | None:
        """The inner rule's bootstrap interval, blended like the prediction (the outer rule is
        taken as fixed: the paper published no interval)."""
        w = self.weight(N)
        if w <= 0:  # the outer rule alone: the paper published no interval
            return None
        ci = getattr(self.inner, "fraction_ci", lambda *a, **k: None)(N, D, bits, level)
        if ci is None:
            return None
        fo = float(self.outer.optimal_fraction(N, D, bits))
        return [w * ci[0] + (1 - w) * fo, w * ci[1] + (1 - w) * fo]

    def range_notes(self, N: float, D: float | None = None, bits: float | None = None,
                    factor: float = 3.0) -> list[str]:
        """Warnings for a query: in the hand-over; or, where the inner rule has weight, tokens
        per bit more than ``factor`` x outside the range it was measured on."""
        out = []
        w = self.weight(N)
        if 0 < w < 1:
            out.append(f"N={N:.3g} lies in the hand-over between the measured rule and the "
                       f"paper's: {self.basis(N)}")
        rng = ((getattr(self.inner, "provenance", {}) or {}).get("fit_range") or {}).get(
            "D_per_bit")
        if w > 0 and rng and D is not None and bits:
            x = D / bits
            if x < rng[0] / factor or x > rng[1] * factor:
                out.append(f"tokens per bit D/B={x:.3g} is far outside the range the measured "
                           f"rule was fitted on [{rng[0]:.3g}, {rng[1]:.3g}] (> {factor:g}x): "
                           "extrapolation")
        return out

    # ---- persistence -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        from coqat.law.record import FORMAT

        return {
            "format": FORMAT,
            "law": self.name,
            "class": type(self).__name__,
            "N_lo": self.N_lo,
            "N_hi": self.N_hi,
            "inner": self.inner.to_json(),
            "outer": self.outer.to_json(),
            "evidence": self.evidence,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, d: Any, load: Any = None) -> HandoverRule:
        """The rule from its JSON; ``load`` reads the nested rules (``coqat.law.load_law``,
        which passes itself)."""
        if load is None:
            raise ConfigError("law", "load a handover rule with coqat.law.load_law")
        if isinstance(d, str | Path):
            d = json.loads(Path(d).read_text())
        if d.get("law") != cls.name:
            raise ConfigError("law", f"JSON holds a {d.get('law')!r} law, not {cls.name!r}")
        for k in ("inner", "outer", "N_lo", "N_hi"):
            if k not in d:
                raise ConfigError(f"law.{k}", "missing in a handover rule's JSON")
        rule = cls(load(d["inner"]), load(d["outer"]), float(d["N_lo"]), float(d["N_hi"]),
                   d.get("evidence"))
        rule.provenance = dict(d.get("provenance") or rule.provenance)
        return rule

    def save(self, path: str | Path) -> Path:
        from coqat.config import atomic_write_text

        p = Path(path)
        atomic_write_text(p, json.dumps(self.to_json(), indent=2) + "\n")
        return p

    def describe(self) -> str:
        return (
            f"HandoverRule [handover]: {self.inner.describe()} up to N = {self.N_lo:.3g}; "
            f"{self.outer.describe()} from N = {self.N_hi:.3g}; linear in ln N between"
        )

    def __repr__(self) -> str:
        return f"HandoverRule({self.inner!r}, {self.outer!r}, {self.N_lo:g}, {self.N_hi:g})"
