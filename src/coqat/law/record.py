"""What a law file records beside its parameters: the file format and the fit's provenance."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np

from coqat.law.runs import Runs

FORMAT = "coqat-law/1"


def make_provenance(law: Any, runs: Runs, settings: dict[str, Any]) -> dict[str, Any]:
    from coqat import __version__

    return {
        "data_hash": runs.data_hash(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "coqat_version": __version__,
        "fit_settings": jsonable(settings),
        "n_runs": len(runs),
        "fit_range": runs.ranges(),
    }


def jsonable(o: Any) -> Any:
    """``o`` with numpy values as Python ones, tuples as lists and inf/NaN as None."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o
