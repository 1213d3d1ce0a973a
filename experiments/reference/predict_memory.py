"""Record the planner's predictions for the memory-budget check (question 5) before the runs.

At a fixed training budget of D = 151,453,696 tokens (2,311 steps of 65,536) and at most 2.2 MB
of weights (N B / 8), which (size, bit width) of the ladder gives the lowest loss? The law fitted
on sessions 1-2 (the shipped law ``reference-linux-c``) predicts each candidate's loss at its own
optimal QAT fraction, with bootstrap CIs; the runs that check it are slice ``s6`` of
run_slice.py (4m at 4 bits is already measured: the 4m 4-bit S=80 grid has this D).

    python experiments/reference/predict_memory.py   # -> predictions/memory-budget.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
D = 151_453_696
CANDIDATES = [("4m", 4.0), ("7m", 2.0), ("12m", 1.0), ("17m", 1.0)]


def main() -> None:
    import sys

    target = HERE / "predictions" / "memory-budget.json"
    if target.exists() and "--force" not in sys.argv:
        raise SystemExit(f"{target} exists (a prediction recorded before the runs); --force")
    from coqat.model.config import ladder, param_counts
    from coqat.plan import load_law, optimal_fraction

    law = load_law("reference-linux-c")
    rows = []
    for size, bits in CANDIDATES:
        N = param_counts(ladder(size, vocab_size=8192, seq_len=512)).total
        o = optimal_fraction(law, N, D, bits, level=0.9)
        rows.append(
            {
                "size": size,
                "N": N,
                "bits": bits,
                "weight_bytes": N * bits / 8,
                "S_total": D / (N * bits / 8),
                "f_opt": o["f_opt"],
                "f_opt_ci": o.get("f_opt_ci"),
                "loss_opt": o["loss_opt"],
                "loss_opt_ci": o.get("loss_opt_ci"),
                "N_over_largest_fitted": N / max(law.provenance["fit_range"]["N"]),
            }
        )
    best = min(rows, key=lambda r: r["loss_opt"])
    out = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "D_total": D,
        "law": "reference-linux-c (src/coqat/law/defaults/reference-linux-c.json)",
        "candidates": rows,
        "predicted_best": best["size"],
    }
    (HERE / "predictions").mkdir(exist_ok=True)
    (HERE / "predictions" / "memory-budget.json").write_text(json.dumps(out, indent=1) + "\n")
    for r in rows:
        print(
            f"{r['size']:>4} {r['bits']:g}-bit {r['weight_bytes'] / 1e6:.2f} MB  "
            f"f* {r['f_opt']:.2f}  loss {r['loss_opt']:.4f} {r['loss_opt_ci']}"
        )
    print("predicted best:", best["size"])


if __name__ == "__main__":
    main()
