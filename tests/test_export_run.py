"""A finished run exports to packed weights whose evaluated loss equals the run's own loss."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import tiny_run_config


@pytest.mark.parametrize(
    "bits,fraction,fmt",
    [(4, 0.5, "compressed-tensors"), (1.58, 1.0, "coqat"), (2, 0.0, "compressed-tensors")],
)
def test_run_export_eval_roundtrip(tiny_data, tmp_path, bits, fraction, fmt):
    from coqat.cli import main
    from coqat.train.export import evaluate_path, export_run
    from coqat.train.run import execute

    cfg = tiny_run_config(tiny_data, **{"qat.bits": bits, "qat.fraction": fraction,
                                        "tokens": 8 * 32 * 16})  # fmt: skip
    res = execute(cfg, tmp_path / "run")
    info = export_run(tmp_path / "run", tmp_path / "export", format=fmt)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md"} == set(info["files"])  # fmt: skip
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in (tmp_path / "export").iterdir())
    ev = evaluate_path(tmp_path / "export", device="cpu")
    # the export holds exactly the fake-quantized weights: same loss (PTQ loss when f = 0)
    assert ev["val_loss"] == pytest.approx(res["loss"], rel=0, abs=1e-6)
    assert main(["eval", str(tmp_path / "export"), "--device", "cpu"]) == 0
    meta = json.loads((tmp_path / "export" / "config.json").read_text())["coqat"]
    assert meta["run"]["loss"] == res["loss"] and meta["run"]["f"] == res["f"]
    assert meta["provenance"]["config_hash"] == res["config_hash"]
    assert meta["provenance"]["data_hash"] == res["data_hash"]
    assert meta["data"]["eot_id"] == 0 and "GPL-2.0" in meta["data"]["license"]
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"{res['loss']:.4f}" in card and "GPL-2.0" in card and f"f = {res['f']:.3f}" in card
    if fmt != "coqat":
        assert "AutoModelForCausalLM.from_pretrained" in card


def test_export_finds_relative_data_from_any_folder(tiny_data, tmp_path, monkeypatch, capsys):
    """A run trained with a relative data.path exports (with its tokenizer) and evaluates from
    another working directory; without a way to find the data it fails loudly, not silently
    without a tokenizer."""
    from coqat.cli import main
    from coqat.errors import CoqatError
    from coqat.train.export import evaluate_path, export_run
    from coqat.train.run import execute

    project = tmp_path / "project"
    shutil.copytree(tiny_data, project / "data" / "tiny")
    monkeypatch.chdir(project)
    cfg = tiny_run_config("data/tiny", **{"qat.bits": 4, "tokens": 8 * 32 * 4})
    res = execute(cfg, "runs/r")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    export_run(project / "runs" / "r", elsewhere / "exp")  # found above the run folder
    assert (elsewhere / "exp" / "tokenizer.json").read_bytes() == (
        project / "data" / "tiny" / "tokenizer.json"
    ).read_bytes()
    meta = json.loads((elsewhere / "exp" / "config.json").read_text())["coqat"]
    assert meta["run_config"]["data"]["path"] == str((project / "data" / "tiny").resolve())
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    ev = evaluate_path(elsewhere / "exp", device="cpu")
    assert ev["val_loss"] == pytest.approx(res["loss"], abs=1e-6)

    # a run whose data cannot be found: an error that says what to pass, then --data works
    shutil.copytree(project / "runs" / "r", tmp_path / "moved" / "r")
    with pytest.raises(CoqatError, match="--data"):
        export_run(tmp_path / "moved" / "r", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    args = ["export", str(tmp_path / "moved" / "r"), "--out", str(tmp_path / "x")]
    assert main(args) == 2 and "--data" in capsys.readouterr().err
    assert main([*args, "--data", str(project / "data" / "tiny")]) == 0
    assert (tmp_path / "x" / "tokenizer.json").is_file()


def test_eval_refuses_a_corrupted_export(tiny_data, tmp_path, capsys):
    from coqat.cli import main
    from coqat.train.export import export_run
    from coqat.train.run import execute

    execute(tiny_run_config(tiny_data, **{"tokens": 8 * 32 * 4}), tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "exp")
    st = tmp_path / "exp" / "model.safetensors"
    blob = bytearray(st.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # same size, still a valid safetensors file
    st.write_bytes(bytes(blob))
    assert main(["eval", str(tmp_path / "exp"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: sha256 does not match" in err and "Traceback" not in err


def test_export_of_fp_only_run_is_refused(tiny_data, tmp_path):
    from coqat.errors import CoqatError
    from coqat.train.export import export_run
    from coqat.train.run import execute

    cfg = tiny_run_config(tiny_data, **{"qat.bits": 16, "tokens": 8 * 32 * 4})
    execute(cfg, tmp_path / "run")
    with pytest.raises(CoqatError, match="FP-only"):
        export_run(tmp_path / "run", tmp_path / "export")


def test_cli_train_and_bad_flags(tiny_data, tmp_path, capsys):
    from coqat.cli import main

    args = [
        "train",
        "--out",
        str(tmp_path / "r"),
        "--data",
        str(tiny_data),
        "--device",
        "cpu",
        "--tokens",
        str(8 * 32 * 6),
        "--bits",
        "4",
        "--fraction",
        "0.5",
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "model.d_model=32",
        "model.n_layers=1",
        "model.n_heads=2",
        "model.vocab_size=512",
        "data.val_tokens=1024",
        "--json",
    ]
    assert main(args) == 0
    assert '"status": "done"' in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "x"), "--fraction", "2"]) == 2
    assert "qat.fraction" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--bits", "9"]) == 2
    assert "qat.bits" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_smoke(tmp_path):
    """The README's main job, shortened: prepare the sample, train the fraction grid."""
    from coqat.train.quickstart import quickstart

    out = quickstart(tmp_path / "qs", tokens=20_000, seeds=(0,), device="cpu")
    runs = [r for seed in out["results"].values() for r in seed.values()]
    assert len(runs) == 5 and all(r["status"] == "done" for r in runs)
    assert 4 < out["unigram"] < 9
