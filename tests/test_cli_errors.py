"""Expected failures end in one line, ``coqat: error: ...`` (or argparse's ``coqat CMD: error:``)
and exit status 2, never a traceback. Each case builds its bad input and runs ``coqat.cli.main``
in process."""

from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path

import pytest
from helpers import tiny_run_config

TINY = [
    "--size", "tiny", "--tokens", "10240", "--device", "cpu", "--compile", "off",
    "--batch-size", "8", "--seq-len", "32", "data.val_tokens=1024",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    """A finished tiny run and its export."""
    from coqat.train.run import execute

    root = tmp_path_factory.mktemp("cli-errors")
    cfg = tiny_run_config(tiny_data, tokens=8 * 32 * 12)
    execute(cfg, root / "run")
    from coqat.train.export import export_run

    export_run(root / "run", root / "export")
    return root


def _law(tmp: Path, params: dict, law: str = "closed-form") -> str:
    from coqat.law.base import FORMAT

    p = tmp / "law.json"
    p.write_text(json.dumps({"format": FORMAT, "law": law, "params": params}))
    return str(p)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _truncate(path: Path, keep: float = 0.5) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])


def _killed_run(tiny_data, tmp: Path) -> Path:
    """A run folder with a checkpoint (as a kill after the FP phase leaves it)."""
    from coqat.config import to_dict
    from coqat.train.run import Trainer

    cfg = tiny_run_config(tiny_data)
    run = tmp / "killed"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    tr = Trainer(cfg)
    tr.train_step()
    tr.save(run / "checkpoint.pt")
    return run


def _train_args(tiny_data, run: Path) -> list[str]:
    cfg = tiny_run_config(tiny_data)
    return ["train", "--data", str(tiny_data), "--out", str(run), "--device", "cpu",
            "--compile", "off", f"--tokens={cfg.tokens}", "--batch-size", "8",
            "--seq-len", "32", "--bits", "4", "--fraction", "0.25", "model.vocab_size=512",
            "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
            "data.val_tokens=2048", "optim.lr=3e-3"]  # fmt: skip


# name -> (setup(tiny_data, finished, tmp) -> argv, text the error must contain)
CASES = {
    "checkpoint garbage": (
        lambda d, f, t: _train_args(d, _corrupt_ckpt(_killed_run(d, t), garbage=True)),
        "checkpoint.pt",
    ),
    "checkpoint truncated": (
        lambda d, f, t: _train_args(d, _corrupt_ckpt(_killed_run(d, t), garbage=False)),
        "--no-resume",
    ),
    "train --out under a file": (
        lambda d, f, t: _train_args(d, _file(t) / "run"),
        "not a directory",
    ),
    "train --out impossible": (lambda d, f, t: _train_args(d, Path("/proc/coqat-run")), "/proc"),
    "data prepare --out under a file": (
        lambda d, f, t: ["data", "prepare", "--sample", "--max-docs", "5", "--out",
                         str(_file(t) / "d")],
        "not a directory",
    ),
    "fit --out under a file": (
        lambda d, f, t: ["fit", _runs_csv(t), "--law", "closed-form", "--out",
                         str(_file(t) / "law.json")],
        "not a directory",
    ),
    "export --out under a file": (
        lambda d, f, t: ["export", str(f / "run"), "--out", str(_file(t) / "e")],
        "not a directory",
    ),
    "quickstart --out under a file": (
        lambda d, f, t: ["quickstart", "--out", str(_file(t) / "q")],
        "not a directory",
    ),
    "eval truncated safetensors": (
        lambda d, f, t: ["eval", str(_broken(f, t, "model.safetensors")), "--data", str(d)],
        "model.safetensors",
    ),
    "eval garbage config.json": (
        lambda d, f, t: ["eval", str(_broken(f, t, "config.json")), "--data", str(d)],
        "config.json",
    ),
    "eval export without model.safetensors": (
        lambda d, f, t: ["eval", str(_broken(f, t, "model.safetensors", delete=True)),
                         "--data", str(d)],
        "model.safetensors",
    ),
    "eval run without model.pt": (
        lambda d, f, t: ["eval", str(t), "--data", str(d)],
        "model.pt",
    ),
    "law missing parameter": (
        lambda d, f, t: ["plan", "-N", "30M", "-D", "1B", "--law", _law(t, {})],
        "params.a",
    ),
    "law non-numeric parameter": (
        lambda d, f, t: ["plan", "-N", "30M", "-D", "1B", "--law", _law(t, {"a": "big"})],
        "params.a",
    ),
    "law negative a": (
        lambda d, f, t: ["plan", "-N", "30M", "-D", "1B", "--law", _law(t, {"a": -5})],
        "params.a",
    ),
    "law NaN parameter": (
        lambda d, f, t: ["plan", "-N", "30M", "-D", "1B", "--law", _law(t, {"a": float("nan")})],
        "params.a",
    ),
    "loss law NaN parameter": (
        lambda d, f, t: ["plan", "-N", "30M", "-D", "1B", "--law", _loss_law(t, "nan")],
        "params.",
    ),
    "loss law missing parameter": (
        lambda d, f, t: ["plan", "-N", "30M", "-D", "1B", "--law", _loss_law(t, None)],
        "params.",
    ),
    "law not JSON": (
        lambda d, f, t: ["plan", "-N", "30M", "-D", "1B", "--law", _text(t, "law.json", "{")],
        "invalid JSON",
    ),
    "fit runs JSON not a table": (
        lambda d, f, t: ["fit", _text(t, "runs.json", '{"N": 1}'), "--out", str(t / "o.json")],
        "runs.json",
    ),
    "fit runs JSON garbage": (
        lambda d, f, t: ["fit", _text(t, "runs.json", "[{"), "--out", str(t / "o.json")],
        "runs.json",
    ),
    "fit runs JSON rows not objects": (
        lambda d, f, t: ["fit", _text(t, "runs.json", "[1, 2]"), "--out", str(t / "o.json")],
        "runs.json",
    ),
    "train --tokens nan": (lambda d, f, t: ["train", "--tokens", "nan", "--out", str(t)], "nan"),
    "train --tokens inf": (lambda d, f, t: ["train", "--tokens", "inf", "--out", str(t)], "inf"),
    "quickstart --tokens inf": (
        lambda d, f, t: ["quickstart", "--tokens", "inf", "--out", str(t)],
        "inf",
    ),
    "optim.lr=inf": (
        lambda d, f, t: ["train", *TINY, "--data", str(d), "--out", str(t / "r"), "optim.lr=inf"],
        "optim.lr: must be a finite number",
    ),
    "optim.lr=nan": (
        lambda d, f, t: ["train", *TINY, "--data", str(d), "--out", str(t / "r"), "optim.lr=nan"],
        "optim.lr: must be a finite number",
    ),
    "missing data folder": (
        lambda d, f, t: ["train", *TINY, "--data", str(t / "nope"), "--out", str(t / "r")],
        "manifest not found",
    ),
}


def _corrupt_ckpt(run: Path, garbage: bool) -> Path:
    p = run / "checkpoint.pt"
    if garbage:
        p.write_bytes(b"\x80\x02not a checkpoint at all" * 10)
    else:
        _truncate(p)
    return run


def _file(tmp: Path) -> Path:
    p = tmp / "a-file"
    p.write_text("x")
    return p


def _text(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


def _runs_csv(tmp: Path) -> str:
    rows = ["N,D_fp,D_qat,bits,loss"]
    for f in (0.1, 0.3, 0.6):
        rows.append(f"1e7,{1e9 * (1 - f)},{1e9 * f},4,{3 + (f - 0.3) ** 2}")
    return _text(tmp, "runs.csv", "\n".join(rows) + "\n")


def _loss_law(tmp: Path, value) -> str:
    from coqat.law import load_law

    src = Path(__file__).parents[1] / "src/coqat/law/defaults/reference-linux-c.json"
    d = json.loads(src.read_text())
    name = sorted(d["params"])[0]
    if value is None:
        del d["params"][name]
    else:
        d["params"][name] = float(value)
    d.pop("bootstrap", None)
    p = tmp / "loss-law.json"
    p.write_text(json.dumps(d))
    assert load_law  # the shipped law itself loads (checked in test_law_*)
    return str(p)


def _broken(finished: Path, tmp: Path, name: str, delete: bool = False) -> Path:
    out = _copy(finished / "export", tmp / "export")
    if delete:
        (out / name).unlink()
    elif name.endswith(".json"):
        (out / name).write_text('{"model_type": ')
    else:
        _truncate(out / name)
    return out


def _main(argv: list[str], capsys) -> tuple[int, str]:
    from coqat.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    except BaseException:  # noqa: BLE001 - a traceback is the failure this test looks for
        pytest.fail(f"traceback for {argv}:\n{traceback.format_exc()}")
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("name", list(CASES))
def test_expected_failures_are_one_line_errors(name, tiny_data, finished, tmp_path, capsys):
    setup, text = CASES[name]
    argv = setup(tiny_data, finished, tmp_path)
    capsys.readouterr()
    rc, err = _main(argv, capsys)
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert rc == 2, f"{name}: exit {rc}, stderr:\n{err}"
    assert lines and lines[-1].startswith("coqat") and ": error: " in lines[-1], err
    assert text.lower() in lines[-1].lower(), f"{name}: {text!r} not in {lines[-1]!r}"
    assert "Traceback" not in err


def test_os_errors_name_the_path_not_the_temporary_file():
    from coqat.cli import _os_error

    e = FileNotFoundError(2, "No such file or directory", "/proc/.x.csv.4345.tmp")
    assert _os_error(e) == "cannot access /proc/x.csv: No such file or directory"
