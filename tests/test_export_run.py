"""A finished run exports to packed weights whose evaluated loss equals the run's own loss."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_run_config


@pytest.mark.parametrize("bits,fraction", [(4, 0.5), (1.58, 1.0), (2, 0.0)])
def test_run_export_eval_roundtrip(tiny_data, tmp_path, bits, fraction):
    from coqat.cli import main
    from coqat.train.export import evaluate_path, export_run
    from coqat.train.run import execute

    cfg = tiny_run_config(tiny_data, **{"qat.bits": bits, "qat.fraction": fraction,
                                        "tokens": 8 * 32 * 16})
    res = execute(cfg, tmp_path / "run")
    info = export_run(tmp_path / "run", tmp_path / "export")
    assert {"config.json", "model.safetensors"} <= set(info["files"])
    ev = evaluate_path(tmp_path / "export", device="cpu")
    # the export holds exactly the fake-quantized weights: same loss (PTQ loss when f = 0)
    assert ev["val_loss"] == pytest.approx(res["loss"], rel=0, abs=1e-6)
    assert main(["eval", str(tmp_path / "export"), "--device", "cpu"]) == 0


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

    args = ["train", "--out", str(tmp_path / "r"), "--data", str(tiny_data), "--device", "cpu",
            "--tokens", str(8 * 32 * 6), "--bits", "4", "--fraction", "0.5", "--seq-len", "32",
            "--batch-size", "8", "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
            "model.vocab_size=512", "data.val_tokens=1024", "--json"]
    assert main(args) == 0
    assert '"status": "done"' in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "x"), "--fraction", "2"]) == 2
    assert "qat.fraction" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--bits", "9"]) == 2
    assert "qat.bits" in capsys.readouterr().err


def test_quickstart_smoke(tmp_path):
    """The README's main job, shortened: prepare the sample, train the fraction grid."""
    from coqat.train.quickstart import quickstart

    out = quickstart(tmp_path / "qs", tokens=20_000, seeds=(0,), device="cpu")
    runs = [r for seed in out["results"].values() for r in seed.values()]
    assert len(runs) == 5 and all(r["status"] == "done" for r in runs)
    assert 4 < out["unigram"] < 9
