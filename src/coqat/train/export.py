"""Export a finished run as packed low-bit weights, and evaluate an export or a run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coqat.config import from_dict
from coqat.errors import CoqatError
from coqat.model.llama import Llama
from coqat.train.config import RunConfig


def load_run_model(run_dir: Path) -> tuple[Llama, RunConfig, bool]:
    """The final model of a finished run (fake quantizers attached if it ended in QAT)."""
    from coqat.quant import load_state_dict_checked, prepare
    from coqat.train.checkpoint import load_checkpoint

    path = run_dir / "model.pt"
    if not path.exists():
        raise CoqatError(f"run: {run_dir} has no model.pt (is the run finished?)")
    blob = load_checkpoint(path, hint="train the run again (--no-resume)")
    cfg = from_dict(RunConfig, blob["config"])
    model = Llama(cfg.model)
    if blob["quantized"]:
        prepare(model, _quant_config(cfg))
    load_state_dict_checked(model, blob["model"])
    return model, cfg, bool(blob["quantized"])


def _quant_config(cfg: RunConfig):
    from coqat.quant.config import QuantConfig

    q = cfg.qat
    return QuantConfig(
        bits=q.bits, granularity=q.granularity, group_size=q.group_size, embed_bits=q.embed_bits
    )


def export_run(run_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Pack the run's quantized weights (a run that ended in FP, f = 0, is quantized with the
    quantizers' initialisation, which is the round-to-nearest PTQ grid)."""
    from coqat.quant import export, prepare

    model, cfg, quantized = load_run_model(run_dir)
    if cfg.qat.is_fp:
        raise CoqatError("run: an FP-only run (qat.bits=16) has no low-bit weights to export")
    if not quantized:
        prepare(model, _quant_config(cfg))
    tok = Path(cfg.data.path) / "tokenizer.json" if cfg.data.path else None
    result = run_dir / "result.json"
    extra = {"run": json.loads(result.read_text())} if result.exists() else {}
    extra["run_config"] = json.loads((run_dir / "config.json").read_text())
    export(
        model, out_dir, cfg.model, _quant_config(cfg), tok if tok and tok.exists() else None, extra
    )
    files = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir())}
    return {"out": str(out_dir), "files": files, "bits": cfg.qat.bits}


def _folder_kind(path: Path) -> str:
    """'export' or 'run': what ``path`` holds, from its config.json (an export's has a
    quantization_config) or, without one, from its weights file."""
    if not path.is_dir():
        raise CoqatError(f"{path}: no such folder (give an export folder or a run folder)")
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            d = json.loads(cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CoqatError(f"{cfg}: not valid JSON ({e}); export or train again") from None
        if not isinstance(d, dict):
            raise CoqatError(f"{cfg}: not a coqat config (top level must be an object)")
        if "quantization_config" in d or "coqat_model_config" in d:
            return "export"
        if "qat" in d and "model" in d:
            return "run"
    return "export" if (path / "model.safetensors").exists() else "run"


def _load_export_checked(path: Path):
    from coqat.quant import load_export

    st = path / "model.safetensors"
    if not st.is_file():
        raise CoqatError(f"{st}: missing; {path} is an export folder without its weights")
    try:
        return load_export(path)
    except Exception as e:  # safetensors raises SafetensorError on a truncated or foreign file
        if type(e).__name__ != "SafetensorError":
            raise
        raise CoqatError(
            f"{st}: not a readable safetensors file ({e}); it is truncated or corrupt, export "
            "the run again"
        ) from None


def evaluate_path(
    path: Path, *, data: str | None = None, val_tokens: int = 0, device: str = "auto"
) -> dict[str, Any]:
    """Validation loss of an export folder (model.safetensors) or a run folder (model.pt), and
    the number of validation tokens it was measured on."""
    from dataclasses import replace

    from coqat.train.run import Trainer

    path = Path(path)
    kind = _folder_kind(path)
    if kind == "export":
        model, info = _load_export_checked(path)
        run_cfg = (info.get("extra") or {}).get("run_config") or {}
        cfg = from_dict(RunConfig, run_cfg) if run_cfg else RunConfig(model=model.cfg)
    else:
        model, cfg, _ = load_run_model(path)
    cfg = replace(
        cfg,
        data=replace(
            cfg.data, path=data or cfg.data.path, val_tokens=val_tokens or cfg.data.val_tokens
        ),
        device=device,  # type: ignore[arg-type]
        compile="off",
        qat=replace(cfg.qat, bits=16.0, fraction=0.0),
    )
    tr = Trainer(cfg)
    model = model.to(tr.device)
    loss = tr.evaluate(model)
    return {
        "kind": kind,
        "path": str(path),
        "val_loss": loss,
        "val_tokens": tr.last_eval_tokens,
        "val_tokens_requested": cfg.val_tokens,
    }
