"""``coqat quickstart``: the whole pipeline on the embedded sample, in a few CPU minutes.

It prepares the embedded Linux C sample, then measures one compute-optimal-QAT question at a
small budget: at a fixed number of training tokens, which QAT fraction f gives the best 2-bit
model? Every fraction of a seed branches from one shared FP trunk (the sweep's trunk sharing),
so a grid of five fractions costs about three runs; two seeds show the noise the answer carries.
It ends with the planner's answer at the same budget, to set beside the measured one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coqat.config import config_hash, from_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quickstart:
    """What the quickstart trains. Defaults: 1,000 steps of 8 x 64 tokens a run (at 256 steps
    the 2-bit model trained from scratch beat the FP model: too few steps to tell the fractions
    apart); with the trunk shared, about 3.2M tokens of training for two seeds."""

    tokens: int = 512_000  # per run: S_total = 14.7 for the tiny model at 2 bits
    bits: float = 2.0
    fractions: tuple[float, ...] = (0.0, 0.1, 0.3, 0.6, 1.0)
    seeds: tuple[int, ...] = (0, 1)
    size: str = "tiny"
    vocab: int = 512
    seq_len: int = 64
    batch_size: int = 8
    lr: float = 1.5e-3  # the FP model's final loss as at 3e-3 (3.158 vs 3.157, 2 seeds), its
    # seed spread 0.011 instead of 0.058
    val_tokens: int = 16_384
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # more RunConfig fields

    def run_config(self, data_dir: Path, fraction: float, seed: int):
        from coqat.train.config import RunConfig

        base = {
            "size": self.size,
            "model": {"vocab_size": self.vocab, "seq_len": self.seq_len},
            "data": {"path": str(data_dir), "val_tokens": self.val_tokens},
            "optim": {"lr": self.lr, "batch_size": self.batch_size},
            "tokens": self.tokens,
            "eval_every": self.tokens,  # evaluate only at the phase switch and the end
            "seed": seed,
            "device": self.device,
            "qat": {"bits": self.bits, "fraction": fraction},
        }
        return from_dict(RunConfig, base | self.extra)


def _prepare_data(out: Path, vocab: int) -> Path:
    from coqat.data import prepare, sample_path

    data_dir = out / f"data-v{vocab}"
    if not (data_dir / "manifest.json").exists():
        log.info("1/4 preparing the embedded sample (%s) -> %s", sample_path().name, data_dir)
        prepare([sample_path()], data_dir, vocab_size=vocab, val_fraction=0.05)
    return data_dir


def _train_seed(q: Quickstart, out: Path, data_dir: Path, seed: int) -> dict[float, dict]:
    """Every fraction of one seed: one shared FP trunk, each run branched from it at its own
    step (QAT from scratch, f = 1, trains alone)."""
    from coqat.train.phases import plan_phases, trunk_identity
    from coqat.train.run import execute, train_trunk

    cfgs = {f: q.run_config(data_dir, f, seed) for f in q.fractions}
    branch = {f: plan_phases(c).branch_step for f, c in cfgs.items()}
    shared = sorted({b for b in branch.values() if b > 0})
    ckpts: dict[int, Path] = {}
    if shared:
        any_cfg = next(iter(cfgs.values()))
        from coqat.data import load_manifest

        # the trunk's folder is named by what it depends on (coqat.sweep.keys.trunk_key keys a
        # sweep's trunks the same way, with the code version too)
        ident = config_hash(trunk_identity(any_cfg), load_manifest(data_dir).data_hash)
        tdir = out / "trunks" / ident
        ckpts = train_trunk(any_cfg, tdir, shared, progress=True)
    results = {}
    for f, cfg in cfgs.items():
        name = f"{q.bits:g}b-f{f:g}-s{seed}-{config_hash(cfg)[:8]}"
        start = ckpts.get(branch[f]) if branch[f] > 0 else None
        results[f] = execute(cfg, out / "runs" / name, start_from=start, progress=True)
    return results


def quickstart(out: Path, q: Quickstart | None = None, **kw: Any) -> dict[str, Any]:
    """Run the quickstart ``q`` (or ``Quickstart(**kw)``) in folder ``out``; prints the
    comparison and returns ``{"unigram", "results": {seed: {f: result}}, "summary"}``."""
    from coqat.data import TokenDataset, unigram_entropy

    q = q or Quickstart(**kw)
    out = Path(out)
    t0 = time.perf_counter()
    data_dir = _prepare_data(out, q.vocab)
    ds = TokenDataset(data_dir, "train")
    val = TokenDataset(data_dir, "val")
    log.info("data: %s train / %s val tokens, vocab %d", f"{len(ds):,}", f"{len(val):,}",
             ds.vocab_size)  # fmt: skip
    unigram = unigram_entropy(ds)
    results: dict[int, dict[float, dict]] = {}
    for i, seed in enumerate(q.seeds):
        log.info("2/4 seed %d (%d of %d): %d fractions at %g bits, %s tokens each", seed, i + 1,
                 len(q.seeds), len(q.fractions), q.bits, f"{q.tokens:,}")  # fmt: skip
        results[seed] = _train_seed(q, out, data_dir, seed)
    summary = summarize(q, results)
    _report(q, results, summary, unigram, time.perf_counter() - t0, out)
    return {"unigram": unigram, "results": results, "summary": summary}


def summarize(q: Quickstart, results: dict[int, dict[float, dict]]) -> dict[str, Any]:
    """The measured optimum over the fraction grid (mean over seeds), whether every seed picks
    it, the seed spread, the FP model's loss and the paper's closed-form fraction."""
    import numpy as np

    from coqat.law import FractionClosedForm

    fr = list(q.fractions)
    L = np.array([[results[s][f]["loss"] for f in fr] for s in q.seeds])  # seeds x fractions
    mean = L.mean(axis=0)
    best = int(np.nanargmin(mean))
    per_seed = [fr[int(np.nanargmin(row))] for row in L]
    # paired: how much worse each other fraction is than the best, seed by seed
    margins = {fr[j]: (L[:, j] - L[:, best]).tolist() for j in range(len(fr)) if j != best}
    # fractions the best does not beat in every seed: within the noise of two seeds
    tied = sorted([fr[best]] + [f for f, m in margins.items() if min(m) <= 0])
    one = results[q.seeds[0]][fr[0]]
    N, D = one["N"], one["D_total"]
    f_hat = float(FractionClosedForm().optimal_fraction(N, D, q.bits))
    fp_only = [
        results[s][0.0]["loss_fp"] for s in q.seeds if 0.0 in results[s]
    ]  # the FP model with its cooldown, before PTQ
    return {
        "fractions": fr,
        "loss": L.tolist(),
        "mean": mean.tolist(),
        "spread": (L.max(axis=0) - L.min(axis=0)).tolist(),
        "f_best": fr[best],
        "f_best_per_seed": per_seed,
        "seeds_agree": len(set(per_seed)) == 1,
        "margins": margins,
        "tied": tied,
        "interior": 0 < best < len(fr) - 1,
        "loss_fp16": float(np.mean(fp_only)) if fp_only else float("nan"),
        "N": N,
        "D": D,
        "S_total": one["S_total"],
        "f_hat": f_hat,
        "f_hat_in_tied": tied[0] <= f_hat <= tied[-1] or _nearest(fr, f_hat) in tied,
    }


def _nearest(grid: list[float], x: float) -> float:
    return min(grid, key=lambda g: abs(g - x))


def _report(q, results, sm, unigram, wall, out) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    seeds = list(q.seeds)
    t = Table(
        title=f"{q.bits:g}-bit val loss (nats/token), N = {sm['N']:,}, D = {sm['D']:,} "
        f"(S_total {sm['S_total']:.1f}); unigram {unigram:.3f}"
    )
    t.add_column("QAT fraction f", justify="left")
    for s in seeds:
        t.add_column(f"seed {s}", justify="right")
    t.add_column("mean", justify="right")
    t.add_column("seed spread", justify="right")
    for j, f in enumerate(sm["fractions"]):
        what = {0.0: " (FP, then PTQ)", 1.0: " (QAT from scratch)"}.get(f, "")
        mark = " <- best" if f == sm["f_best"] else ""
        t.add_row(
            f"{f:g}{what}{mark}",
            *(f"{sm['loss'][i][j]:.4f}" for i in range(len(seeds))),
            f"{sm['mean'][j]:.4f}",
            f"{sm['spread'][j]:.4f}",
        )
    t.add_row("16-bit FP model (f = 0 before PTQ)", *([""] * len(seeds)),
              f"{sm['loss_fp16']:.4f}", "")  # fmt: skip
    con.print("[bold]3/4[/] results")
    con.print(t)
    fb, tied = sm["f_best"], sm["tied"]
    margins = "; ".join(
        f"f = {f:g}: {', '.join(f'{m:+.4f}' for m in ms)}" for f, ms in sm["margins"].items()
    )
    if len(q.seeds) == 1:
        verdict = f"f* = {fb:g} (one seed: no estimate of its noise; try --seeds 2)"
    elif len(tied) == 1:
        verdict = f"f* = {fb:g}, better than every other fraction in every seed"
    else:
        verdict = (
            f"f* in {{{', '.join(f'{f:g}' for f in tied)}}} (the seeds pick "
            f"{', '.join(f'{x:g}' for x in sm['f_best_per_seed'])}: tied within their noise)"
        )
    where = "inside" if 0 < fb < 1 and all(0 < f < 1 for f in tied) else "at the end of"
    con.print(f"      measured optimum, {where} the grid: {verdict}")
    con.print(f"      loss minus the best, seed by seed (each seed's runs share one FP trunk): "
              f"{margins}")  # fmt: skip
    con.print(
        f"      the best {q.bits:g}-bit model is {min(sm['mean']) - sm['loss_fp16']:+.4f} nats "
        f"from the 16-bit FP model; PTQ alone (f = 0) costs "
        f"{sm['mean'][0] - sm['loss_fp16']:+.4f}"
    )
    agree = "agrees with" if sm["f_hat_in_tied"] else "differs from"
    con.print(
        f"[bold]4/4[/] planner: `coqat plan --params {sm['N']} --tokens {sm['D']} --bits "
        f"{q.bits:g} --law paper` gives the paper's closed form f_hat = exp(-a / ln S_total) = "
        f"{sm['f_hat']:.3f} at S_total = {sm['S_total']:.1f}; it {agree} the measurement "
        f"(fitted at 86M-2.2B parameters; this model has {sm['N'] / 1e6:.2f}M)"
    )
    con.print(f"done in {wall:.0f} s; runs in {out / 'runs'}")
