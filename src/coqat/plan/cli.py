"""``coqat plan`` and ``coqat fit`` subcommands.

The top-level CLI calls :func:`add_parser` with its subparsers and then ``args.func(args)``.
``python -m coqat.plan.cli plan|fit ...`` works stand-alone. Heavy imports live inside the
command functions (cold start of ``plan`` <= 0.5 s: no scipy.optimize, no matplotlib).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    from coqat.law.registry import LAWS

    p = subparsers.add_parser(
        "plan",
        help="optimal QAT fraction / bit width under memory / FP-equivalent size",
        description="Plan a QAT run from a scaling law. Numbers accept 1e9, 30M, 2.2B; memory "
        "accepts 8GB, 512MB, 8GiB.",
    )
    p.add_argument("--params", "-N", help="total parameter count N (e.g. 30M, 2.2B)")
    p.add_argument("--tokens", "-D", help="total training tokens D = D_fp + D_qat")
    p.add_argument("--bits", "-B", default="4", help="QAT bit width (default 4)")
    p.add_argument(
        "--law",
        help="law JSON from `coqat fit`, or a shipped law by name: reference-linux-c (the "
        "reference experiment's loss law, 1.9-91.2M parameters), reference-linux-c-fraction "
        "(its optima as a closed form with a size term, 1.9-29.9M) or default (the default law)",
    )
    p.add_argument(
        "--memory", help="weight-memory budget: compare bit widths (needs --tokens or --flops)"
    )
    p.add_argument(
        "--embedding-params",
        help="with --memory: parameters of the tied embedding (e.g. 4.2M), stored at max(B, 4) "
        "bits as coqat does; default 0 = every parameter at B bits (the paper's N B/8)",
    )
    p.add_argument("--flops", help="training compute budget C; D = C / (6 N)")
    p.add_argument(
        "--compare-fp", action="store_true", help="size of the FP model with the same loss"
    )
    p.add_argument("--ci", type=float, default=0.9, help="CI level (default 0.9)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", help="write a loss-vs-fraction plot (PNG)")
    p.set_defaults(func=cmd_plan)

    f = subparsers.add_parser(
        "fit",
        help="fit a scaling law to a runs table",
        description="Fit a law to RUNS_FILE (.csv/.parquet/.json/.jsonl).",
    )
    f.add_argument(
        "runs",
        metavar="RUNS_FILE",
        help="runs table with columns N, D_fp, D_qat, bits, loss (optional cluster), e.g. from "
        "`coqat results export`",
    )
    f.add_argument(
        "--law",
        default="qat",
        choices=list(LAWS),
        help="qat = the paper's law; closed-form = f_hat(S) fitted to measured optima; "
        "closed-form-sized = the same with a size term, f_hat(S (N/1e7)^g); closed-form-tpb = "
        "f_hat in tokens per bit, f_hat(D / (B 1.25e6)); the rest are rival "
        "laws (default qat)",
    )
    f.add_argument("--out", required=True, help="output law JSON")
    f.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="cluster-bootstrap resamples (e.g. 200; default 0 = none)",
    )
    f.add_argument(
        "--holdout", help="held-out check: largest-N, largest-S, heldout or EXPR such as 'N>=5e7'"
    )
    f.add_argument(
        "--source",
        help="text recorded as the law's provenance source (what it was fitted on), shown by "
        "`coqat plan`",
    )
    f.add_argument(
        "--where",
        help="fit only the rows matching COLUMN OP VALUE conditions joined by & (numbers or "
        "text), e.g. 'schedule==fused & variant== & S_total>=40'",
    )
    f.add_argument(
        "--compare",
        action="store_true",
        help="compare all loss laws (in-sample, held-out, AIC/BIC)",
    )
    f.add_argument("--restarts", type=int, default=8, help="random restarts (default 8)")
    f.add_argument("--seed", type=int, default=0, help="seed of restarts and bootstrap")
    f.add_argument("--jobs", type=int, default=1, help="processes for the bootstrap")
    f.add_argument(
        "--set-default",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also save as the default law (refused unless the fit converged)",
    )
    f.add_argument("--json", action="store_true", help="print the summary as JSON")
    f.set_defaults(func=cmd_fit)


# ---------------------------------------------------------------------------------------------
def _law_header(law: Any) -> dict[str, Any]:
    pv = dict(getattr(law, "provenance", {}) or {})
    fr = getattr(law, "fit_report_", None) or {}
    return {
        "law": law.name,
        "class": type(law).__name__,
        "description": law.describe(),
        "source": pv.get("source"),
        "data_hash": pv.get("data_hash"),
        "date": pv.get("date"),
        "coqat_version": pv.get("coqat_version"),
        "n_runs": pv.get("n_runs"),
        "fit_range": pv.get("fit_range"),
        "converged": fr.get("converged"),
        "n_boot": (getattr(law, "bootstrap_info_", None) or {}).get("n", 0),
    }


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from coqat.errors import ConfigError
    from coqat.plan import default_law, load_law
    from coqat.plan.planner import (
        best_under_memory,
        fp_equivalent,
        optimal_fraction,
    )
    from coqat.units import parse_bytes, parse_number

    law = load_law(args.law) if args.law else default_law()
    level = args.ci
    if not 0 < level < 1:
        raise ConfigError("ci", f"must be in (0, 1), got {level!r}")
    bits = parse_number(args.bits, "bits")
    out: dict[str, Any] = {"law": _law_header(law)}
    if args.memory:
        mem = parse_bytes(args.memory)
        if (args.tokens is None) == (args.flops is None):
            raise ConfigError("tokens", "--memory needs exactly one of --tokens or --flops")
        tok = parse_number(args.tokens, "tokens") if args.tokens else None
        fl = parse_number(args.flops, "flops") if args.flops else None
        out["memory"] = {
            "memory_bytes": mem,
            "rows": best_under_memory(
                law,
                mem,
                tokens=tok,
                flops=fl,
                level=level,
                embed_params=parse_number(args.embedding_params, "embedding-params")
                if args.embedding_params
                else 0.0,
            ),
        }
    if args.params is not None:
        N = parse_number(args.params, "params")
        if args.tokens is not None:
            D = parse_number(args.tokens, "tokens")
        elif args.flops is not None:
            D = parse_number(args.flops, "flops") / (6 * N)
        else:
            raise ConfigError("tokens", "give --tokens D (or --flops C) with --params")
        out["plan"] = optimal_fraction(law, N, D, bits, level=level)
        if args.compare_fp:
            if out["plan"].get("loss_opt") is None:
                out["fp_equivalent"] = {"note": out["plan"].get("note")}
            else:
                out["fp_equivalent"] = fp_equivalent(
                    law, N, D, bits, out["plan"]["f_opt"], level=level
                )
        if args.plot:
            _plot(law, N, D, bits, out["plan"], args.plot, level)
            out["plot"] = args.plot
    elif not args.memory:
        raise ConfigError("params", "give --params N --tokens D [--bits B], or --memory BYTES")
    if args.json:
        print(json.dumps(out, indent=2, default=_json_default))
    else:
        _print_plan(out)
    return 0


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _fmt(v: Any, ci: Any = None, digits: int = 4) -> str:
    if v is None:
        return "-"
    s = f"{v:.{digits}g}" if isinstance(v, float) else str(v)
    if ci:
        s += f"  [{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"
    return s


def _evidence_line(ev: dict[str, Any]) -> str:
    """One line of a rule's evidence: where it was measured and how well it predicted held-out
    grids (the keys written by the rule selection; unknown keys are shown as they are)."""
    parts = []
    for k, v in ev.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, list) and all(isinstance(x, int | float) for x in v):
            parts.append(f"{k}=[" + ", ".join(f"{x:.3g}" for x in v) + "]")
        elif isinstance(v, str | int):
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def _print_plan(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from coqat.units import fmt_count

    con = Console()
    h = out["law"]
    con.print(f"[bold]law[/]: {escape(h['description'])}")
    prov = {
        k: h[k]
        for k in ("data_hash", "date", "coqat_version", "n_runs", "converged", "n_boot")
        if h.get(k) is not None
    }
    if prov:
        con.print("[bold]provenance[/]: " + ", ".join(f"{k}={v}" for k, v in prov.items()))
    if "plan" in out:
        p = out["plan"]
        lv = p.get("level")
        t = Table(
            title=f"QAT plan: N={fmt_count(p['N'])}, D={fmt_count(p['D'])}, "
            f"bits={p['bits']:g}, S_total={p['S_total']:.4g}"
        )
        t.add_column("quantity")
        t.add_column(f"value  [{int(round(100 * lv))}% CI]" if lv else "value")
        t.add_row("optimal QAT fraction f*", _fmt(p["f_opt"], p.get("f_opt_ci")))
        t.add_row("closed form f_hat (paper)", _fmt(p["f_closed_form"]))
        if p.get("loss_opt") is not None:
            t.add_row("loss at f*", _fmt(p["loss_opt"], p.get("loss_opt_ci")))
            t.add_row(
                f"loss at f={p['baseline']:g}", _fmt(p["loss_baseline"], p.get("loss_baseline_ci"))
            )
            t.add_row(
                f"regret of f={p['baseline']:g} (loss)",
                _fmt(p["regret_loss"], p.get("regret_loss_ci")),
            )
            t.add_row(
                f"extra tokens f={p['baseline']:g} needs",
                _fmt(p["extra_tokens"], p.get("extra_tokens_ci")),
            )
            t.add_row(
                "D_fp / D_qat",
                f"{fmt_count(p['D'] * (1 - p['f_opt']))} / {fmt_count(p['D'] * p['f_opt'])}",
            )
        con.print(t)
        if p.get("basis"):
            con.print(f"[bold]rule used[/]: {escape(p['basis'])}")
        ev = p.get("evidence") or {}
        if ev:
            con.print("[bold]evidence[/]: " + escape(_evidence_line(ev)))
        if p.get("note"):
            con.print(f"[yellow]note[/]: {p['note']}")
        for w in p.get("warnings", []):
            con.print(f"[red]warning[/]: {w}")
    if "fp_equivalent" in out:
        e = out["fp_equivalent"]
        if "N_fp" in e:
            con.print(
                f"FP-equivalent size: N_fp={fmt_count(e['N_fp'])} "
                f"{_fmt(None) if not e.get('N_fp_ci') else ''}"
                + (
                    f"[{fmt_count(e['N_fp_ci'][0])}, {fmt_count(e['N_fp_ci'][1])}]"
                    if e.get("N_fp_ci")
                    else ""
                )
                + f" ({e['ratio']:.3g}x params, quantized bytes / FP bytes = "
                f"{e['bytes_ratio']:.3g})"
            )
        else:
            con.print(f"FP-equivalent size: {e.get('note')}")
    if "memory" in out:
        t = Table(title=f"bit widths under {out['memory']['memory_bytes'] / 1e9:.4g} GB of weights")
        for c in ("bits", "N", "D", "S_total", "f*", "loss at f*"):
            t.add_column(c)
        for r in out["memory"]["rows"]:
            t.add_row(
                f"{r['bits']:g}",
                fmt_count(r["N"]),
                fmt_count(r["D"]),
                f"{r['S_total']:.4g}",
                _fmt(r["f_opt"]),
                _fmt(r["loss_opt"], r.get("loss_opt_ci")),
            )
        con.print(t)
        if all(r["loss_opt"] is None for r in out["memory"]["rows"]):
            from coqat.plan.planner import NEEDS_FIT

            con.print(f"[yellow]note[/]: cannot rank bit widths: {NEEDS_FIT}")
        ws = sorted({w for r in out["memory"]["rows"] for w in r["warnings"]})
        for w in ws:
            con.print(f"[red]warning[/]: {w}")


def _plot(
    law: Any, N: float, D: float, bits: float, plan: dict[str, Any], path: str, level: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    if plan.get("loss_opt") is None:
        from coqat.law.closed_form import FractionClosedForm

        S = np.logspace(0.5, 6, 300)
        ax.plot(S, FractionClosedForm().predict_fraction(S), label="paper f_hat(S)")
        name = getattr(law, "name", "")
        if name == "closed-form-sized":  # the fitted rule at this N
            ax.plot(S, law.predict_fraction(S, N), label=f"{name} at N={N:.3g}")
        elif name == "closed-form" and law.a != FractionClosedForm().a:
            ax.plot(S, law.predict_fraction(S), label=f"refitted a={law.a:.3g}")
        ax.scatter([plan["S_total"]], [plan["f_opt"]], color="C3", zorder=3, label="query")
        ax.set_xscale("log")
        ax.set_xlabel("tokens per parameter byte S_total")
        ax.set_ylabel("optimal QAT fraction")
    else:
        from coqat.plan.planner import loss_curve

        c = loss_curve(law, N, D, bits, level=level)
        ax.plot(c["f"], c["loss"], label="predicted loss")
        if c["lo"] is not None:
            ax.fill_between(c["f"], c["lo"], c["hi"], alpha=0.25, label=f"{level:.0%} CI")
        ax.axvline(plan["f_opt"], color="C3", ls="--", label=f"f* = {plan['f_opt']:.3f}")
        ax.axvline(0.1, color="grey", ls=":", label="f = 0.1")
        ax.set_xlabel("QAT fraction f = D_qat / D")
        ax.set_ylabel("loss (nats)")
    ax.set_title(f"N={N:.3g}, D={D:.3g}, {bits:g} bits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
def _fit_command(args: argparse.Namespace) -> str:
    """The `coqat fit` command line that reproduces this fit (from the parsed options)."""
    import shlex

    parts = ["coqat", "fit", args.runs, "--law", args.law]
    for opt in ("where", "bootstrap", "jobs", "holdout", "restarts", "seed", "out", "source"):
        v = getattr(args, opt, None)
        if v not in (None, "", 0, False):
            parts += [f"--{opt}", str(v)]
    if args.compare:
        parts.append("--compare")
    return shlex.join(parts)


def cmd_fit(args: argparse.Namespace) -> int:
    import json

    from coqat.law import FRACTION_RULES, LOSS_LAWS, Runs, law_class
    from coqat.plan import save_default

    runs = Runs.from_any(args.runs)
    if args.where:
        runs = runs.where(args.where)
        if len(runs) == 0:
            from coqat.errors import ConfigError

            raise ConfigError("where", f"{args.where!r} matches no run of {args.runs}")
    cls = law_class(args.law)
    summary: dict[str, Any] = {
        "runs": args.runs,
        "n_runs": len(runs),
        "law": args.law,
        "where": args.where,
    }
    if args.law in FRACTION_RULES:
        law = cls().fit_runs(runs)
        summary["params"] = law.params_
        summary["fit"] = law.fit_report_
    else:
        law = cls().fit(runs, n_restarts=args.restarts, seed=args.seed)
        if args.bootstrap:
            law.bootstrap(runs, n_boot=args.bootstrap, seed=args.seed, n_jobs=args.jobs)
            summary["param_ci"] = law.param_cis(0.9)
        fr = law.fit_report_
        summary["params"] = law.params_
        summary["fit"] = {
            k: fr[k]
            for k in (
                "converged",
                "objective",
                "n_starts",
                "n_converged",
                "best_start",
                "mae",
                "mean_rel_err",
                "max_rel_err",
                "rmse_log",
                "aic",
                "bic",
                "seconds",
            )
        }
        if args.holdout:
            from coqat.law.validate import holdout

            rep = holdout(runs, cls, args.holdout, n_restarts=args.restarts, seed=args.seed)
            rep.pop("law")
            summary["holdout"] = rep
    if args.compare:
        from coqat.law.validate import compare

        summary["compare"] = compare(
            runs,
            list(LOSS_LAWS.values()),
            args.holdout or "largest-N",
            n_restarts=args.restarts,
            seed=args.seed,
        )
    if args.source:
        law.provenance["source"] = args.source
        law.provenance["command"] = _fit_command(args)
    law.save(args.out)
    summary["out"] = args.out
    summary["converged"] = law.converged
    if args.set_default is not None:
        summary["default"] = str(save_default(law, args.set_default or None))
    if args.json:
        print(json.dumps(summary, indent=2, default=_json_default))
    else:
        _print_fit(summary)
    if not law.converged:
        print(
            "warning: no start converged; the law was written but must not be used as a default",
            file=sys.stderr,
        )
    return 0


def _print_fit(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(
        f"[bold]{s['law']}[/] law fitted on {s['n_runs']} runs from {s['runs']} -> {s['out']}"
        f"  (converged: {s['converged']})"
    )
    t = Table(title="parameters")
    t.add_column("param")
    t.add_column("value")
    ci = s.get("param_ci") or {}
    if ci:
        t.add_column("90% CI")
    for k, v in s["params"].items():
        t.add_row(k, f"{v:.5g}", *([f"[{ci[k][0]:.4g}, {ci[k][1]:.4g}]"] if ci else []))
    con.print(t)
    con.print(
        "fit: "
        + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in s["fit"].items()
            if k != "residuals_log"
        )
    )
    if "holdout" in s:
        h = s["holdout"]
        con.print(
            f"holdout \\[{h['rule']}]: fit on {h['n_fit']}, held out {h['n_heldout']}: "
            f"mean rel err {h.get('mean_rel_err', float('nan')):.4%}, max "
            f"{h.get('max_rel_err', float('nan')):.4%}, compute ratio "
            f"{h.get('compute_ratio', float('nan')):.3g}x {h.get('error', '')}"
        )
    if "compare" in s:
        t = Table(title="model comparison")
        for c in ("law", "k", "MAE", "AIC", "BIC", "held-out mean rel", "held-out max rel"):
            t.add_column(c)
        for r in s["compare"]:
            t.add_row(
                r["law"],
                str(r["k"]),
                f"{r['mae']:.4g}",
                f"{r['aic']:.1f}",
                f"{r['bic']:.1f}",
                f"{r['heldout_mean_rel_err']:.3%}",
                f"{r['heldout_max_rel_err']:.3%}",
            )
        con.print(t)
    if "default" in s:
        con.print(f"saved as default law: {s['default']}")


def main(argv: list[str] | None = None) -> int:
    from coqat.errors import CoqatError

    parser = argparse.ArgumentParser(prog="coqat")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CoqatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
