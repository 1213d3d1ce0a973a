"""``coqat quickstart``: the whole pipeline on the embedded sample, in a few CPU minutes."""

from __future__ import annotations

import math
import time
from pathlib import Path

from coqat.config import from_dict


def quickstart(
    out: Path, *, tokens: int = 600_000, bits: float = 2.0, device: str = "auto"
) -> dict:
    """FP -> PTQ, FP -> fused QAT (f = 0.25) and QAT from scratch on the embedded sample, then the
    planner's closed form at the same S_total. 2 bits by default: at 4 bits a model this small and
    short loses ~0.01 nats to PTQ, too little for the three runs to tell apart."""
    from rich.console import Console
    from rich.table import Table

    from coqat.data import TokenDataset, prepare, sample_path, unigram_entropy
    from coqat.train.config import RunConfig
    from coqat.train.run import execute

    con = Console()
    out = Path(out)
    data_dir = out / "data"
    t0 = time.perf_counter()
    if not (data_dir / "manifest.json").exists():
        con.print(
            f"[bold]1/4[/] preparing the embedded sample ({sample_path().name}) -> {data_dir}"
        )
        prepare([sample_path()], data_dir, vocab_size=4096, val_fraction=0.05)
    ds = TokenDataset(data_dir, "train")
    val = TokenDataset(data_dir, "val")
    con.print(f"      {len(ds):,} train / {len(val):,} val tokens, vocab {ds.vocab_size}")
    unigram = unigram_entropy(ds)

    base = {
        "size": "tiny",
        "model": {"vocab_size": ds.vocab_size, "seq_len": 128},
        "data": {"path": str(data_dir), "val_tokens": 65_536},
        "optim": {"lr": 3e-3, "batch_size": 16},
        "tokens": tokens,
        "eval_every": tokens,  # evaluate at the phase switch and at the end
        "device": device,
    }
    runs = {
        f"FP -> PTQ {bits:g}-bit (f=0)": {"qat": {"bits": bits, "fraction": 0.0}},
        f"FP -> QAT {bits:g}-bit (f=0.25, fused)": {"qat": {"bits": bits, "fraction": 0.25}},
        f"QAT {bits:g}-bit from scratch (f=1)": {"qat": {"bits": bits, "fraction": 1.0}},
    }
    results = {}
    for i, (name, extra) in enumerate(runs.items()):
        cfg = from_dict(RunConfig, base | extra)
        con.print(f"[bold]2/4[/] training {name} ({cfg.tokens:,} tokens)")
        results[name] = execute(cfg, out / "runs" / f"run{i}", progress=True)

    t = Table(title=f"validation loss (nats/token), unigram baseline {unigram:.3f}")
    for c in ("run", "val loss", "vs unigram", "S_total", "wall s"):
        t.add_column(c, justify="right" if c != "run" else "left")
    ptq = results[f"FP -> PTQ {bits:g}-bit (f=0)"]
    t.add_row(
        "FP model (16-bit, before PTQ)",
        f"{ptq['loss_fp']:.4f}",
        f"{ptq['loss_fp'] - unigram:+.3f}",
        "",
        "",
    )
    for name, r in results.items():
        t.add_row(
            name,
            f"{r['loss']:.4f}",
            f"{r['loss'] - unigram:+.3f}",
            f"{r['S_total']:.1f}",
            f"{r['wall_fp'] + r['wall_qat']:.1f}",
        )
    con.print("[bold]3/4[/] results")
    con.print(t)
    best = min(results, key=lambda k: results[k]["loss"])
    cost = ptq["loss"] - ptq["loss_fp"]
    con.print(f"      best of the three: {best}; PTQ costs {cost:+.4f} nats vs the FP model")

    con.print("[bold]4/4[/] planner (paper's closed form f_hat = exp(-a / ln S_total))")
    qat = results[f"FP -> QAT {bits:g}-bit (f=0.25, fused)"]
    try:
        from coqat.law import FractionClosedForm

        fh = float(FractionClosedForm().predict_fraction(qat["S_total"]))
        con.print(f"      S_total = {qat['S_total']:.1f} -> f_hat = {fh:.3f}")
    except ImportError:  # pragma: no cover - law layer missing
        pass
    con.print(f"done in {time.perf_counter() - t0:.0f} s; runs in {out / 'runs'}")
    assert all(math.isfinite(r["loss"]) for r in results.values())
    return {"unigram": unigram, "results": results}
