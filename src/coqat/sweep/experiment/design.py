"""What the optimal QAT fraction depends on: the designed grids, their contrasts, the
pre-registered predictions scored, and the planner's default rule chosen on held-out grids.

The designed grids (``spec.design.calls``) hold one factor at a time against the reference grid
(``reference_size`` at ``fixed_tokens`` tokens, the design's batch, the whole train split, the
fixed-length decay): the model size at fixed tokens, the batch at fixed tokens (optimizer
steps), the train-split subset (epochs), the decay definition at small fractions. Every f* is
the refined optimum of a curve (``coqat.law.analysis``); its interval comes from the
experiment's run-to-run noise model (``spec.noise``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from coqat.law.analysis import StepNoise, fstar_bootstrap, fstar_row, grids, interval
from coqat.law.analysis.rules import RULE_FORMS, choose_rule, fit_form, heldout_scores
from coqat.sweep.experiment.records import fused, is_grid, main_runs, setting
from coqat.sweep.experiment.spec import ExperimentSpec

DESIGN_BY = ("size", "bits", "D_total", "tokens_per_step", "train_tokens", "basis", "seed")


def design_records(records: list[dict[str, Any]], spec: ExperimentSpec) -> list[dict[str, Any]]:
    """The fused grid runs of the design's calls, with ``tokens_per_step`` and ``train_tokens``
    (0 = the whole train split) from their configs."""
    calls = set(spec.design.calls)
    out = []
    for r in records:
        if r["call"] not in calls or not (is_grid(r) and fused(r)):
            continue
        r = dict(r)
        cfg = r["cfg"]
        r["tokens_per_step"] = int(setting(cfg, "optim.batch_size")) * int(
            setting(cfg, "model.seq_len"))
        r["train_tokens"] = int(setting(cfg, "data.train_tokens", 0) or 0)
        out.append(r)
    return out


def _row(g: Any, spec: ExperimentSpec, rules: dict[str, Any]) -> dict[str, Any]:
    r = fstar_row(g, rules, min_steps=spec.min_steps)
    r0 = g.runs[0]
    r.update(tokens_per_step=r0["tokens_per_step"], train_tokens=r0["train_tokens"],
             epochs=r0.get("epochs"), D_per_bit=g.D / g.bits, basis=r0["basis"])
    return r


def design_rows(records: list[dict[str, Any]], spec: ExperimentSpec) -> tuple[list, list]:
    """(grids, rows) of the design: one curve per setting (``DESIGN_BY``), at least
    ``spec.design.min_fractions`` fractions, with the paper's rule and the 10% rule beside each
    optimum and a 90% interval of f* from the noise model."""
    from coqat.law import FractionClosedForm

    gs = grids(design_records(records, spec), by=DESIGN_BY,
               min_fractions=spec.design.min_fractions)
    rules = {"paper": FractionClosedForm(), "baseline": spec.baseline}
    rows = [_row(g, spec, rules) for g in gs]
    ns = spec.noise
    draws = fstar_bootstrap(rows, spec.noise.model(), n=ns.draws, seed=ns.seed)
    for j, r in enumerate(rows):
        r["f_refined_ci90"] = interval(draws[:, j])
    return gs, rows, draws


def _is_reference(r: dict[str, Any], spec: ExperimentSpec, **over: Any) -> bool:
    want = {"D_total": spec.design.fixed_tokens, "tokens_per_step": spec.design.tokens_per_step,
            "train_tokens": 0, "basis": spec.design.basis, "bits": 1.0, "seed": 0} | over
    return all(
        (abs(float(r[k]) - float(v)) < 1e-9 if isinstance(v, int | float) else r[k] == v)
        for k, v in want.items()
    )


def _diff(rows: list[dict[str, Any]], draws: np.ndarray, i: int, j: int) -> dict[str, Any]:
    """f*(j) - f*(i): the measured difference, its 90% interval and the share of positive
    differences over the noise draws (an optimum at the end of the measured fractions is a
    bound, and so is a difference that involves it: ``at_endpoint``)."""
    d = draws[:, j] - draws[:, i]
    return {"delta": float(rows[j]["f_refined"] - rows[i]["f_refined"]), "ci90": interval(d),
            "p_positive": float(np.mean(d > 0)),
            "at_endpoint": bool(rows[i]["at_endpoint"] or rows[j]["at_endpoint"])}


def _size_contrast(rows: list[dict[str, Any]], draws: np.ndarray, idx: list[int]) -> dict:
    """f* against ln N over the grids ``idx`` (one bit width, fixed tokens): the slope with its
    interval over the noise draws, and the slope of the paper's rule on the same grids."""
    from coqat.law import FractionClosedForm

    idx = sorted(idx, key=lambda j: rows[j]["N"])
    lnN = np.log([rows[j]["N"] for j in idx])
    slopes = np.array([np.polyfit(lnN, draws[k, idx], 1)[0] for k in range(draws.shape[0])])
    paper = np.array([FractionClosedForm().optimal_fraction(rows[j]["N"], rows[j]["D_total"],
                                                            rows[j]["bits"]) for j in idx])
    return {
        "bits": float(rows[idx[0]]["bits"]),
        "rows": list(idx),
        "sizes": [rows[j]["size"] for j in idx],
        "fstar": [rows[j]["f_refined"] for j in idx],
        "slope_per_ln_N": float(np.polyfit(lnN, [rows[j]["f_refined"] for j in idx], 1)[0]),
        "slope_ci90": interval(slopes),
        "paper_slope_per_ln_N": float(np.polyfit(lnN, paper, 1)[0]),
        "paper_f": [float(x) for x in paper],
        "N_ratio": float(np.exp(lnN[-1] - lnN[0])),
        "at_endpoint": [bool(rows[j]["at_endpoint"]) for j in idx],
    }


def seed_pairs(rows: list[dict[str, Any]], draws: np.ndarray, noise: StepNoise) -> list[dict]:
    """Grids that differ only in the seed, each against its seed-0 twin: the f* difference with
    its interval over the noise draws; the mean loss difference over the shared fractions (an
    offset that moves the whole curve and not its optimum); and the fraction-specific part, the
    sd of the differences about that mean over sqrt(2) (a per-run sd, ddof 1), beside the noise
    model's sd at the grid's steps."""
    same = tuple(k for k in DESIGN_BY if k != "seed")
    base = {tuple(r[k] for k in same): j for j, r in enumerate(rows) if int(r["seed"]) == 0}
    out = []
    for j, r in enumerate(rows):
        i = base.get(tuple(r[k] for k in same))
        if int(r["seed"]) == 0 or i is None:
            continue
        a = dict(zip(np.round(rows[i]["f"], 3), rows[i]["loss"]))
        b = dict(zip(np.round(r["f"], 3), r["loss"]))
        fs = sorted(set(a) & set(b))
        d = np.array([b[f] - a[f] for f in fs])
        out.append({
            "size": r["size"], "bits": float(r["bits"]), "seeds": [0, int(r["seed"])],
            "rows": [i, j], "fstar": [rows[i]["f_refined"], r["f_refined"]],
            **_diff(rows, draws, i, j), "fractions": [float(f) for f in fs],
            "loss_diff": d.tolist(), "offset": float(d.mean()),
            "sd_about_offset": float(d.std(ddof=1) / np.sqrt(2)) if d.size > 1 else None,
            "steps": int(r["steps"]), "noise_model_sd": noise.sd(r["steps"], 0.5),
        })
    return out


def seed_noise(pairs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the seed pairs (:func:`seed_pairs`) measure directly, each with its degrees of
    freedom and one-sided 95% upper bound (chi-square); None without pairs:

    * ``loss_sd``: the fraction-specific run-to-run sd of the loss (the differences about each
      pair's offset, pooled, per run: / sqrt(2)), beside the noise model's sd at those steps;
    * ``fstar_sd``: the sd of one grid's f* over seeds, from the pairs whose optima are both
      inside the measured fractions (per grid: the differences / sqrt(2))."""
    from scipy.stats import chi2

    ss, df = 0.0, 0
    for p in pairs:
        d = np.asarray(p["loss_diff"], float)
        if d.size > 1:
            ss += float(np.sum((d - d.mean()) ** 2)) / 2.0
            df += d.size - 1
    if df == 0:
        return None
    inner = [p["delta"] for p in pairs if not p["at_endpoint"]]
    out = {"pairs": len(pairs), "steps": sorted({int(p["steps"]) for p in pairs}),
           "loss_sd": float(np.sqrt(ss / df)), "loss_df": df,
           "loss_sd_upper95": float(np.sqrt(ss / chi2.ppf(0.05, df))),
           "noise_model_sd": sorted({float(p["noise_model_sd"]) for p in pairs}),
           "fstar_pairs": len(inner)}
    if inner:
        sf = float(np.sum(np.square(inner))) / 2.0
        out.update(fstar_sd=float(np.sqrt(sf / len(inner))),
                   fstar_sd_upper95=float(np.sqrt(sf / chi2.ppf(0.05, len(inner)))),
                   fstar_max_abs_diff=float(np.max(np.abs(inner))))
    return out


def contrasts(rows: list[dict[str, Any]], draws: np.ndarray, spec: ExperimentSpec) -> dict:
    """The one-factor contrasts of the design (module doc), each with the f* of its grids and
    the difference's 90% interval over the noise draws: size at fixed tokens per bit width and
    seed (``size``: 1 bit, seed 0; ``size_by_bits``), bit width at fixed size and tokens, the
    batch (steps), the train-split subset (epochs) and the seed."""
    ref_size = spec.design.reference_size
    out: dict[str, Any] = {}
    # size at fixed tokens, per bit width and seed: f* against ln N, the slope with its interval
    fixed: dict[tuple[float, int], list[int]] = {}
    for j, r in enumerate(rows):
        key = (float(r["bits"]), int(r["seed"]))
        if _is_reference(r, spec, bits=key[0], seed=key[1]):
            fixed.setdefault(key, []).append(j)
    out["size_by_bits"] = [{"seed": sd, **_size_contrast(rows, draws, ix)}
                           for (b, sd), ix in sorted(fixed.items()) if len(ix) >= 2]
    if len(fixed.get((1.0, 0), [])) >= 2:
        out["size"] = next(c for c in out["size_by_bits"] if c["bits"] == 1.0 and c["seed"] == 0)
    # bit width at fixed size and tokens (seed 0): f*(B) - f*(1 bit)
    one = {rows[j]["size"]: j for j in fixed.get((1.0, 0), [])}
    out["bits"] = [
        {"size": rows[j]["size"], "bits": [1.0, b], "rows": [one[rows[j]["size"]], j],
         "fstar": [rows[one[rows[j]["size"]]]["f_refined"], rows[j]["f_refined"]],
         **_diff(rows, draws, one[rows[j]["size"]], j)}
        for (b, sd), ix in sorted(fixed.items()) if b != 1.0 and sd == 0
        for j in sorted(ix, key=lambda j: rows[j]["N"]) if rows[j]["size"] in one
    ]
    out["seeds"] = seed_pairs(rows, draws, spec.noise.model())
    # batch at fixed tokens (and the tokens at fixed steps)
    big = [j for j, r in enumerate(rows) if r["size"] == ref_size and _is_reference(
        r, spec, D_total=r["D_total"], tokens_per_step=r["tokens_per_step"])
        and r["D_total"] != spec.design.fixed_tokens]
    if len(big) >= 2:
        big.sort(key=lambda j: rows[j]["tokens_per_step"])
        small_b, large_b = big[0], big[-1]
        ref = next((j for j in fixed.get((1.0, 0), []) if rows[j]["size"] == ref_size), None)
        out["batch"] = {
            "rows": big,
            "steps": [rows[j]["steps"] for j in big],
            "tokens_per_step": [rows[j]["tokens_per_step"] for j in big],
            "fstar": [rows[j]["f_refined"] for j in big],
            "more_steps_minus_fewer": _diff(rows, draws, large_b, small_b),
        }
        if ref is not None:
            same_steps = [j for j in big if rows[j]["steps"] == rows[ref]["steps"]]
            if same_steps:
                out["batch"]["tokens_x_at_same_steps"] = rows[same_steps[0]]["D_total"] / rows[
                    ref]["D_total"]
                out["batch"]["more_tokens_same_steps_minus_ref"] = _diff(rows, draws, ref,
                                                                    same_steps[0])
    # epochs: the train-split subsets
    ep = [j for j, r in enumerate(rows) if r["size"] == ref_size and _is_reference(
        r, spec, train_tokens=r["train_tokens"])]
    if len(ep) >= 2:
        ep.sort(key=lambda j: rows[j]["epochs"])
        out["epochs"] = {
            "rows": ep,
            "epochs": [rows[j]["epochs"] for j in ep],
            "fstar": [rows[j]["f_refined"] for j in ep],
            "ci90": [rows[j]["f_refined_ci90"] for j in ep],
            "most_minus_fewest": _diff(rows, draws, ep[0], ep[-1]),
        }
    return out


def decay_pairs(design: list[dict[str, Any]], spec: ExperimentSpec) -> list[dict[str, Any]]:
    """Runs at equal settings and fraction under the design's decay (``spec.design.basis``) and
    the capped decay it replaced (``spec.design.other_basis``): the loss difference."""
    key = ("size", "bits", "D_total", "tokens_per_step", "train_tokens", "seed")
    by: dict[tuple, dict[Any, dict]] = {}
    for r in design:
        by.setdefault(tuple(r[k] for k in key) + (round(float(r["f"]), 3),), {})[r["basis"]] = r
    out = []
    for _k, v in sorted(by.items(), key=lambda kv: str(kv[0])):
        a, b = v.get(spec.design.basis), v.get(spec.design.other_basis)
        if a and b:
            out.append({"size": a["size"], "f": float(a["f"]), "loss_fixed": float(a["loss"]),
                        "loss_capped": float(b["loss"]),
                        "capped_minus_fixed": float(b["loss"]) - float(a["loss"])})
    return out


def preregistered(
    rows: list[dict[str, Any]], gs: list[Any], folder: Path, spec: ExperimentSpec
) -> dict[str, Any]:
    """Each prediction file's rules scored on the measured grids it named: per grid and rule
    the predicted fraction, the refined f*, the miss |f_pred - f*|, a hit (miss <= spec.design.
    hit), the regret (nats) of the predicted fraction on the curve; per rule the totals."""
    by_key = {}
    for g, r in zip(gs, rows):
        by_key[(r["size"], float(r["bits"]), int(r["D_total"]), r["tokens_per_step"],
                r["train_tokens"], r["basis"], int(r.get("seed", 0)))] = (g, r)
    grid_rows, per_rule = [], {}
    for name in spec.design.predictions:
        pred = json.loads((folder / name).read_text())
        for pg in pred["grids"]:
            tt = pg.get("train_tokens") or 0
            tt = 0 if tt == spec.design.train_split_tokens else tt  # the whole split
            basis = _setting_of_variant(pg.get("variant") or "", spec.basis,
                                        spec.design.default_basis)
            for seed in pg["seeds"]:
                k = (pg["size"], float(pg["bits"]), int(pg["D"]), pg["tokens_per_step"], tt,
                     basis, seed)
                if k not in by_key:
                    continue
                g, r = by_key[k]
                out = {"file": name, "commit": pred["commit"], "size": pg["size"],
                       "bits": pg["bits"], "D": pg["D"], "steps": pg["steps"],
                       "epochs": pg.get("epochs"), "seed": seed, "fstar": r["f_refined"],
                       "fstar_ci90": r["f_refined_ci90"], "rules": {}}
                for rule, p in pg["predictions"].items():
                    d = g.regret(p["f"])
                    miss = abs(p["f"] - r["f_refined"])
                    hit = bool(miss <= spec.design.hit)
                    out["rules"][rule] = {"f": p["f"], "miss": miss, "hit": hit,
                                          "regret": d["regret"], "outside": d["outside"]}
                    s = per_rule.setdefault(rule, {"n": 0, "hits": 0, "miss": [], "regret": []})
                    s["n"] += 1
                    s["hits"] += int(hit)
                    s["miss"].append(miss)
                    s["regret"].append(d["regret"])
                grid_rows.append(out)
    summary = {
        rule: {"n": s["n"], "hits": s["hits"], "mae": float(np.mean(s["miss"])),
               "mean_regret": float(np.mean(s["regret"])), "max_regret": float(np.max(s["regret"]))}
        for rule, s in per_rule.items()
    }
    return {"grids": grid_rows, "rules": summary, "hit_within": spec.design.hit}


def _setting_of_variant(variant: str, key: str, default: str) -> str:
    """The value of ``key`` in a run variant (``coqat.sweep.keys.variant_of``: the settings that
    differ from RunConfig's defaults, ``k=v,...``); ``default`` when it is not there."""
    for part in variant.split(","):
        k, _, v = part.partition("=")
        if k == key:
            return v
    return default


def rule_grids(records: list[dict[str, Any]], design_gs: list[Any], spec: ExperimentSpec) -> list:
    """The grids the fraction rules are compared and fitted on: the trained (>= min_steps)
    grids of ``spec.design.rule_bases`` from the earlier calls, and the trained design grids."""
    out = []
    for b in spec.design.rule_bases:
        old = grids(main_runs([r for r in records if r["call"] not in set(spec.design.calls)], b),
                    by=("size", "bits", "D_total", "schedule", "seed"),
                    min_fractions=spec.min_fractions)
        out += [g for g in old if not g.step_starved(spec.min_steps)]
    out += [g for g in design_gs if not g.step_starved(spec.min_steps)]
    return out


def default_rule(gs: list[Any], spec: ExperimentSpec) -> tuple[dict[str, Any], str]:
    """The rule comparison on held-out grids and the planner's default it chooses: the chosen
    form fitted on every grid (with a bootstrap over grids), handing over to the paper's rule
    from the largest measured size on (``coqat.law.HandoverRule``)."""
    from coqat.law import FractionClosedForm
    from coqat.law.handover import HandoverRule

    d = spec.design
    held = heldout_scores(gs, RULE_FORMS, largest=d.largest)
    choice = choose_rule(held)
    inner = fit_form(choice["form"], gs, n_boot=d.boot, seed=0)
    N = np.array([g.N for g in gs])
    Dpb = np.array([g.D / g.bits for g in gs])
    S = np.array([g.S_total for g in gs])
    N_lo = float(N.max())
    N_hi = N_lo * 10 ** d.handover_decades
    evidence = {
        "rule": choice["form"],
        "grids": len(gs),
        "N_range": [float(N.min()), float(N.max())],
        "S_total_range": [float(S.min()), float(S.max())],
        "D_per_bit_range": [float(Dpb.min()), float(Dpb.max())],
        "heldout_mae_leave_one_size_out": held["leave-one-size-out"][choice["form"]]["mae"],
        "heldout_regret_leave_one_size_out":
            held["leave-one-size-out"][choice["form"]]["mean_regret"],
        "heldout_mae_largest": held["largest"][choice["form"]]["mae"],
        "heldout_regret_largest": held["largest"][choice["form"]]["mean_regret"],
        "paper_heldout_regret_leave_one_size_out": held["leave-one-size-out"]["paper"][
            "mean_regret"],
        "source": "experiments/reference (coqat report --experiment experiments/reference)",
    }
    src = (
        f"coqat's default fraction rule: {choice['form']} (chosen by held-out regret among "
        f"{list(RULE_FORMS)} on {len(gs)} measured grids of coqat's reference experiment, "
        f"{N.min() / 1e6:.1f}-{N.max() / 1e6:.1f}M parameters, Linux C, NVIDIA H200) up to "
        f"N = {N_lo / 1e6:.0f}M; the paper's closed form (757 runs, 86M-2.2B, DCLM) from "
        f"N = {N_hi / 1e6:.0f}M; linear in ln N between"
    )
    rule = HandoverRule(inner, FractionClosedForm(), N_lo, N_hi, evidence=evidence, source=src)
    rule.provenance["command"] = "coqat report --experiment experiments/reference"
    text = json.dumps(rule.to_json(), indent=2) + "\n"
    return {"heldout": held, "choice": choice, "evidence": evidence,
            "params": dict(inner.params_), "N_lo": N_lo, "N_hi": N_hi}, text


def design_section(
    records: list[dict[str, Any]], spec: ExperimentSpec, folder: Path
) -> tuple[dict[str, Any], dict[Path, str]]:
    """The design's summary section (rows, contrasts, decay pairs, the pre-registration scored,
    another experiment's scores beside it, the rule comparison and the default rule; each where
    ``spec.design`` asks for it) and the files it writes (the default rule)."""
    gs, rows, draws = design_rows(records, spec)
    sec: dict[str, Any] = {"rows": rows}
    if not rows:
        return sec, {}
    if spec.design.reference_size:
        sec["contrasts"] = contrasts(rows, draws, spec)
        sn = seed_noise(sec["contrasts"]["seeds"])
        if sn is not None:
            sec["seed_noise"] = sn
    sec["decay_pairs"] = decay_pairs(design_records(records, spec), spec)
    if spec.design.predictions:
        sec["preregistered"] = preregistered(rows, gs, folder, spec)
    if spec.design.compare_with:
        from coqat.sweep.experiment.crosscheck import crosscheck

        sec["compared"] = crosscheck(spec, folder)
    if not spec.design.compare_rules:
        return sec, {}
    files: dict[Path, str] = {}
    rg = rule_grids(records, gs, spec)
    sec["rule_grids"] = [{"size": g.labels.get("size"), "N": g.N, "bits": g.bits, "D": g.D,
                          "steps": g.steps, "fstar": g.optimum()["f_refined"]} for g in rg]
    sec["default_rule"], text = default_rule(rg, spec)
    if spec.design.default_rule:
        files[folder / spec.design.default_rule] = text
        sec["default_rule"]["path"] = spec.design.default_rule
    return sec, files
