"""Export a finished run (Hugging Face Llama + compressed-tensors by default), and evaluate an
export or a run folder."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from coqat.config import from_dict, to_dict
from coqat.errors import CoqatError
from coqat.model.llama import Llama
from coqat.train.config import RunConfig

# result.json keys that say where a result came from (the rest says what the run is and did)
PROVENANCE_KEYS = ("commit", "time", "config_hash", "data_hash", "version", "device", "host")


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


def resolve_data_dir(
    data_path: str, run_dir: Path, data_hash: str = "", override: str | Path | None = None
) -> Path:
    """The prepared data folder of a run, as an absolute path.

    A relative ``data.path`` is relative to wherever the run was started, which is unknown: it
    is looked up from the current folder, then from the run folder and each folder above it;
    the first candidate whose data hash is the run's (when known) wins. ``override`` (a folder
    the user names) must match the run's data hash too. CoqatError listing what was tried.
    """
    from coqat.data import TokenDataset
    from coqat.errors import DataError

    def data_hash_of(p: Path) -> str | None:
        try:
            return TokenDataset(p, "train", verify=False).data_hash
        except DataError:
            return None

    if override is not None:
        p = Path(override).resolve()
        h = data_hash_of(p)
        if h is None:
            raise CoqatError(f"data: {p} is not a prepared data folder (no valid manifest.json)")
        if data_hash and h != data_hash:
            raise CoqatError(f"data: {p} has data hash {h}, the run was trained on {data_hash}")
        return p
    if not data_path:
        raise CoqatError("data: the run records no data.path; pass --data DIR")
    rel = Path(data_path)
    here = run_dir.resolve()
    roots = [Path.cwd()] + ([] if rel.is_absolute() else [here, *here.parents])
    tried, other = [], []
    for root in roots:
        p = (root / rel).resolve()
        if p in tried:
            continue
        tried.append(p)
        h = data_hash_of(p)
        if h is not None and (not data_hash or h == data_hash):
            return p
        if h is not None:
            other.append(f"{p} has data hash {h}, the run trained on {data_hash}")
    where = ", ".join(map(str, tried[:4])) + (", ..." if len(tried) > 4 else "")
    raise CoqatError(
        f"data: the run's data folder {data_path!r} was not found (tried {where}"
        f"{'; ' + '; '.join(other) if other else ''}); pass --data DIR, the prepared data folder "
        "the run trained on (its tokenizer goes into the export)"
    )


def data_license(sources: list[dict[str, Any]]) -> str | None:
    """The ``License:`` line of a NOTICE / LICENSE / COPYING file beside a training corpus, or of
    a NOTICE that names the corpus's sha256 (the embedded sample's NOTICE names the reference
    corpus it was cut from); None when none is found."""
    from coqat.data import sample_path

    notes = []
    for s in sources:
        folder = Path(s.get("path", "")).parent
        beside = sorted(
            p for pat in ("NOTICE*", "LICENSE*", "COPYING*") for p in folder.glob(pat)
        ) if folder.is_dir() else []  # fmt: skip
        for p in beside + [sample_path().parent / "NOTICE"]:
            try:
                text = p.read_text("utf-8", errors="replace")
            except OSError:
                continue
            if p not in beside and s.get("sha256", "-") not in text:
                continue
            m = re.search(r"^\s*License:\s*(.+(?:\n(?!\s*\n).+)*)", text, re.MULTILINE)
            if m:
                notes.append(" ".join(m.group(1).split()))
                break
    return "; ".join(dict.fromkeys(notes)) or None


def export_run(
    run_dir: Path,
    out_dir: Path,
    *,
    format: str = "compressed-tensors",
    data: str | Path | None = None,
    pack_bits: int | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Export a finished run's weights, tokenizer, provenance and a model card.

    A run that ended in FP (f = 0) is quantized with the quantizers' initialisation, which is
    the round-to-nearest PTQ grid. ``data`` names the prepared data folder when the run's own
    ``data.path`` cannot be found (it supplies the tokenizer).
    """
    from coqat.data import load_manifest
    from coqat.data.tokenizer import eot_id, load_tokenizer
    from coqat.quant import files, prepare, write_export
    from coqat.train.model_card import model_card

    run_dir = Path(run_dir)
    model, cfg, quantized = load_run_model(run_dir)
    if cfg.qat.is_fp:
        raise CoqatError("run: an FP-only run (qat.bits=16) has no low-bit weights to export")
    if not quantized:
        prepare(model, _quant_config(cfg))
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    data_dir = resolve_data_dir(cfg.data.path, run_dir, result.get("data_hash", ""), data)
    manifest = load_manifest(data_dir)
    tok = data_dir / manifest.tokenizer_file
    eot = eot_id(load_tokenizer(tok))
    if eot != manifest.eot_id:
        raise CoqatError(f"data: {tok} gives end-of-text id {eot}, its manifest {manifest.eot_id}")
    run_cfg = replace(cfg, data=replace(cfg.data, path=str(data_dir)))
    sources = [to_dict(s) for s in manifest.sources]
    meta = {
        "run": {k: v for k, v in result.items() if k not in PROVENANCE_KEYS and k != "pid"},
        "provenance": {k: result.get(k) for k in PROVENANCE_KEYS},
        "data": {
            "path": str(data_dir),
            "eot_id": manifest.eot_id,
            "vocab_size": manifest.vocab_size,
            "tokenizer_sha256": manifest.tokenizer_sha256,
            "sources": sources,
            "license": data_license(sources),
        },
        "run_config": to_dict(run_cfg),
    }
    torch_dtype = None
    if dtype is not None:
        from coqat.quant.hf import DTYPES

        if dtype not in DTYPES:
            raise CoqatError(f"export.dtype: {dtype!r} is not one of {list(DTYPES)}")
        torch_dtype = DTYPES[dtype]
    out_dir = Path(out_dir)
    with files.staged_folder(out_dir) as stage:
        written = write_export(
            model, stage, cfg.model, _quant_config(cfg), format=format, tokenizer_json=tok,
            meta=meta, pack_bits=pack_bits, dtype=torch_dtype,
        )  # fmt: skip
        files.write_text(stage / "README.md", model_card(written, out_dir.name))
    listing = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir())}
    return {"out": str(out_dir), "format": format, "files": listing, "bits": cfg.qat.bits}


def evaluate_path(
    path: Path, *, data: str | None = None, val_tokens: int = 0, device: str = "auto"
) -> dict[str, Any]:
    """Validation loss of an export folder (any format; checksums verified) or a run folder
    (model.pt), and the number of validation tokens it was measured on."""
    from coqat.quant.files import read_config
    from coqat.train.run import Trainer

    path = Path(path)
    cfg_json = read_config(path) if (path / "config.json").is_file() else {}
    if not (path / "model.pt").exists() and (
        "coqat" in cfg_json or "quantization_config" in cfg_json
    ):
        from coqat.quant import load_export

        model, info = load_export(path)
        run_cfg = info["meta"].get("run_config") or {}
        kind = "export"
        cfg = from_dict(RunConfig, run_cfg) if run_cfg else RunConfig(model=model.cfg)
    else:
        model, cfg, _ = load_run_model(path)
        kind = "run"
    if not (data or cfg.data.path):
        raise CoqatError("data: the model records no data folder; pass --data DIR")
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
