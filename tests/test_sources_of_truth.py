"""One source of truth: bit widths, the law registry, the throughput table and the import layers
of coqat.law (no cycles; law and plan never import a higher layer)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from coqat.errors import ConfigError

SRC = Path(__file__).resolve().parent.parent / "src" / "coqat"
REPO = SRC.parent.parent


@pytest.mark.parametrize("bits", [1, 1.58, 2, 3, 4, 5, 6, 7, 8])
def test_every_width_that_trains_also_fits_and_plans(bits):
    """7 bits trained but `coqat fit`/`plan` refused it: now one definition (coqat.bits)."""
    import numpy as np

    from coqat.bits import ALLOWED_BITS
    from coqat.law.closed_form import FractionClosedForm
    from coqat.law.runs import check_bits
    from coqat.plan import optimal_fraction
    from coqat.quant.config import QuantConfig
    from coqat.sweep.spec import spec_from_dict
    from coqat.train.config import QATConfig

    assert float(bits) in ALLOWED_BITS
    assert QATConfig(bits=bits).bits == bits
    assert QuantConfig(bits=bits).bits == bits
    assert check_bits([bits])[0] == bits
    spec_from_dict({"name": "b", "bits": [bits]})
    assert 0 <= optimal_fraction(FractionClosedForm(), 3e7, 3e9, bits)["f_opt"] <= 1
    assert np.isfinite(FractionClosedForm().optimal_fraction(3e7, 3e9, bits))


def test_unsupported_width_is_refused_everywhere():
    from coqat.law.runs import check_bits
    from coqat.quant.config import QuantConfig
    from coqat.train.config import QATConfig

    for make in (lambda: QATConfig(bits=9), lambda: QuantConfig(bits=9), lambda: check_bits(9)):
        with pytest.raises(ConfigError, match="allowed"):
            make()


def test_one_law_registry():
    from coqat import law
    from coqat.law.registry import FRACTION_RULES, LAWS, LOSS_LAWS, law_class
    from coqat.plan import cli

    assert law.LAWS is LAWS and law.LAW_CHOICES is LAWS
    assert set(LAWS) == set(LOSS_LAWS) | set(FRACTION_RULES)
    assert all(LAWS[name].name == name for name in LAWS)
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    fit = parser._subparsers._group_actions[0].choices["fit"]
    choices = next(a.choices for a in fit._actions if a.dest == "law")
    assert list(choices) == list(LAWS)
    with pytest.raises(ConfigError, match="known"):
        law_class("no-such-law")


def _imports(path: Path) -> set[str]:
    """Every coqat module ``path`` imports, at any depth, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skip |= {id(n) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("coqat"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("coqat")}
    return out


def _graph(package: str) -> dict[str, set[str]]:
    mods = {}
    for p in (SRC / package).glob("*.py"):
        name = f"coqat.{package}" + ("" if p.stem == "__init__" else f".{p.stem}")
        mods[name] = p
    return {m: _imports(p) for m, p in mods.items()}


def test_no_import_cycles_in_law():
    g = _graph("law")
    inner = {m: {t for t in deps if t in g and t != "coqat.law"} for m, deps in g.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(inner[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += inner.get(m, ())
        return seen

    cycles = [m for m in inner if m != "coqat.law" and m in reach(m)]
    assert not cycles, cycles


@pytest.mark.parametrize("package", ["law", "plan"])
def test_law_and_plan_import_no_higher_layer(package):
    higher = ("coqat.train", "coqat.sweep", "coqat.model", "coqat.quant", "coqat.data",
              "coqat.cli")
    if package == "law":
        higher += ("coqat.plan",)
    for mod, deps in _graph(package).items():
        bad = [d for d in deps if d.startswith(higher)]
        assert not bad, (mod, bad)


def test_throughput_table_is_the_bench_files():
    from coqat.sweep.throughput import bench_rows, bench_table

    table = bench_table()
    files = {s["file"]: json.loads((REPO / s["file"]).read_text()) for s in table["sources"]}
    bench = [r for d in files.values() for r in d["rows"] if r["bits"] == 4.0]
    assert len(bench) == len(table["rows"])
    for row in bench_rows():
        same = [b for b in bench if b["size"] == row["size"]]
        assert len(same) == 1
        for k, v in row.items():
            assert same[0][k] == v, (row["size"], k)
    for s in table["sources"]:
        assert files[s["file"]]["provenance"]["command"] == s["command"]
        assert files[s["file"]]["provenance"]["peak_tflops"] == table["peak_tflops"]


def test_throughput_estimates():
    from coqat.config import from_dict
    from coqat.model.config import ladder
    from coqat.sweep.throughput import (
        CPU_FLOPS,
        bench_rows,
        gpu_tokens_per_s,
        parse_tokens_per_s,
        tokens_per_s,
    )
    from coqat.train.config import RunConfig

    for r in bench_rows():  # a benchmarked size at the benchmark's shape: its measurement
        m = ladder(r["size"], seq_len=r["seq_len"], vocab_size=8192)
        assert gpu_tokens_per_s(m) == pytest.approx(r["tokens_per_s"], rel=1e-9)
    sizes = ["2m", "4m", "7m", "12m", "17m", "30m", "50m", "90m"]
    tps = [gpu_tokens_per_s(ladder(s, seq_len=512, vocab_size=8192)) for s in sizes]
    assert tps == sorted(tps, reverse=True)  # larger models: fewer tokens/s
    cfg = from_dict(RunConfig, {"size": "12m", "device": "cpu"})
    from coqat.model.config import flops_per_token

    assert tokens_per_s(cfg) == pytest.approx(CPU_FLOPS / flops_per_token(cfg.model))
    assert tokens_per_s(cfg, {"12m": 123.0}) == 123.0 and tokens_per_s(cfg, None, 7.0) == 7.0
    assert parse_tokens_per_s(["7m=5e6", "30m=1.8e6"]) == {"7m": 5e6, "30m": 1.8e6}
    assert parse_tokens_per_s(["2e6"]) == 2e6 and parse_tokens_per_s([]) is None
    with pytest.raises(ConfigError, match="--tokens-per-s"):
        parse_tokens_per_s(["fast"])
