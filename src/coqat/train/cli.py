"""``coqat train``, ``coqat export``, ``coqat eval`` and ``coqat quickstart``."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from coqat.model.config import LADDER


def token_count(text: str) -> int:
    """argparse type of a token count: a finite number >= 1 (``2e7``, ``20_000_000``)."""
    try:
        v = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens, got {text!r}") from None
    if not math.isfinite(v) or v < 1:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1, got {text!r}")
    return int(v)


# flag -> config path; every flag is optional and overrides the config file
_TRAIN_FLAGS = {
    "size": (
        "size",
        str,
        f"model size from the ladder ({', '.join(LADDER)})",
    ),
    "tokens": ("tokens", token_count, "total training tokens D_total (e.g. 2e7)"),
    "bits": ("qat.bits", float, "bit width of the QAT phase: 1, 1.58, 2, 3..8; 16 = FP only"),
    "fraction": (
        "qat.fraction",
        float,
        "QAT fraction f in [0, 1]: 0 = FP then PTQ, 1 = QAT from scratch",
    ),
    "schedule": ("qat.schedule", str, "fused (cooldown & QAT fusion) or standard"),
    "data": ("data.path", str, "prepared data folder (from `coqat data prepare`)"),
    "lr": ("optim.lr", float, "peak learning rate"),
    "batch_size": ("optim.batch_size", int, "sequences per optimizer step"),
    "seq_len": ("model.seq_len", int, "sequence length"),
    "seed": ("seed", int, "random seed (model init and data order)"),
    "device": ("device", str, "auto, cpu or cuda"),
    "compile": ("compile", str, "auto (on for CUDA), on or off"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one FP -> QAT run",
        description="Train one run: FP for (1-f)*D tokens, then QAT for f*D tokens. Settings come "
        "from --config (YAML/TOML), then the flags, then KEY=VALUE overrides (e.g. "
        "qat.cooldown=0.3 optim.weight_decay=0.05). The resolved config is saved in the run "
        "folder.",
    )
    p.add_argument("--config", help="YAML or TOML run config (see examples/)")
    for flag, (_, typ, help_) in _TRAIN_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=typ, help=help_)
    p.add_argument("--out", help="run folder (checkpoints, metrics, result); required to train")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if the folder holds a checkpoint or a finished run",
    )
    p.add_argument("--json", action="store_true", help="print the result record as JSON")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML (usable as --config) and exit without training",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, before or after the flags (model.vocab_size defaults to the "
        "data's vocabulary)",
    )
    p.set_defaults(func=_train, intermixed="overrides")

    e = sub.add_parser(
        "export",
        help="export a trained run for transformers / vLLM (or in coqat's packed format)",
        description="Write a Hugging Face Llama folder from a finished run: config.json, "
        "model.safetensors, tokenizer files, generation_config.json and a model card. "
        "compressed-tensors (default): block linears as pack-quantized int codes, re-encoded "
        "losslessly; hf: dense dequantized weights; coqat: coqat's own packed format (keeps the "
        "embedding quantized). See docs/quant.md.",
    )
    e.add_argument("run", help="a finished run folder (holds model.pt and config.json)")
    e.add_argument("--out", required=True, help="export folder to write (new, empty or an export)")
    e.add_argument(
        "--format",
        default="compressed-tensors",
        choices=["compressed-tensors", "hf", "coqat"],
        help="default: %(default)s",
    )
    e.add_argument(
        "--data",
        help="the run's prepared data folder, when its data.path is not "
        "found from here (supplies the tokenizer)",
    )
    e.add_argument(
        "--pack-bits",
        type=int,
        help="compressed-tensors: int width of the codes "
        "(default: the smallest lossless one; 4 lets vLLM's int4 kernels serve 1-3 "
        "bits)",
    )
    e.add_argument(
        "--dtype",
        choices=["bfloat16", "float32", "float16"],
        help="hf: dtype of the dense weights (default bfloat16)",
    )
    e.set_defaults(func=_export)

    v = sub.add_parser(
        "eval",
        help="validation loss of an exported model or a run",
        description="Load an export folder (or a run folder) and report the validation loss on "
        "the prepared data's validation split.",
    )
    v.add_argument("model", help="export folder or run folder")
    v.add_argument("--data", help="prepared data folder (default: the run's data.path)")
    v.add_argument(
        "--val-tokens", type=token_count, default=0, help="validation tokens (default: the run's)"
    )
    v.add_argument("--device", default="auto", help="auto, cpu or cuda")
    v.set_defaults(func=_eval)

    q = sub.add_parser(
        "quickstart",
        help="prepare the embedded sample, find the best QAT fraction of a tiny model, plan",
        description="End to end on the embedded Linux C sample, on CPU in a few minutes: prepare "
        "data, train a tiny model at 2 bits over a grid of QAT fractions (0 = FP then PTQ, "
        "1 = QAT from scratch) with two seeds, every fraction of a seed branched from one "
        "shared FP trunk, report the measured optimum with its seed noise, and set the "
        "planner's closed-form fraction beside it.",
    )
    q.add_argument(
        "--out", default="runs/quickstart", help="working folder (default runs/quickstart)"
    )
    q.add_argument("--tokens", type=token_count, default=None, help="training tokens per run")
    q.add_argument("--bits", type=float, default=None, help="bit width of the QAT runs")
    q.add_argument("--seeds", type=int, default=None, help="number of seeds (default 2)")
    q.add_argument("--device", default="auto", help="auto, cpu or cuda")
    q.set_defaults(func=_quickstart)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for flag, (path, _, _) in _TRAIN_FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            out.append(f"{path}={v}")
    return out + list(args.overrides or [])


def _train(args: argparse.Namespace) -> int:
    from coqat.train.config import load_run_config
    from coqat.train.run import execute

    cfg = load_run_config(args.config, tuple(_overrides(args)))
    if args.print_config:
        import yaml

        from coqat.config import to_dict

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if not args.out:
        from coqat.errors import ConfigError

        raise ConfigError("--out", "give the run folder to train in (or --print-config)")
    from coqat.train.distributed import shutdown_distributed

    try:
        res = execute(cfg, Path(args.out), resume=not args.no_resume, progress=True)
    finally:
        shutdown_distributed()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 reports
        pass
    elif args.json:
        print(json.dumps(res, indent=2))
    else:
        _print_result(res)
    return 0 if res["status"] == "done" else 1


def _print_result(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"run {res['config_hash']} ({res['status']})")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    rows = [
        ("val loss (final model)", f"{res['loss']:.4f}"),
        ("val loss FP", f"{res['loss_fp']:.4f}"),
        ("val loss PTQ of FP", f"{res['loss_ptq']:.4f}"),
        ("bits / embed bits", f"{res['bits']:g} / {res['embed_bits']}"),
        ("N total / non-emb / linear", f"{res['N']:,} / {res['N_nonemb']:,} / {res['N_linear']:,}"),
        ("model bytes", f"{res['model_bytes']:,.0f}"),
        ("D_total / D_fp / D_qat", f"{res['D_total']:,} / {res['D_fp']:,} / {res['D_qat']:,}"),
        ("f (requested)", f"{res['f']:.4f} ({res['f_requested']:g})"),
        (
            "S_total / S_fp / S_qat",
            f"{res['S_total']:.1f} / {res['S_fp']:.1f} / {res['S_qat']:.1f}",
        ),
        ("FLOPs FP / QAT", f"{res['flops_fp']:.3e} / {res['flops_qat']:.3e}"),
        ("train wall FP / QAT (s)", f"{res['wall_fp']:.1f} / {res['wall_qat']:.1f}"),
        ("eval wall (s)", f"{res.get('wall_eval', float('nan')):.1f}"),
        ("tokens/s (training time)", f"{res['tokens_per_s']:,.0f}"),
        (
            "tokens/s steady (warm-up s)",
            f"{res.get('tokens_per_s_steady', float('nan')):,.0f} "
            f"({res.get('wall_warmup', float('nan')):.1f})",
        ),
    ]
    for r in rows:
        t.add_row(*r)
    Console().print(t)


def _export(args: argparse.Namespace) -> int:
    from coqat.train.export import export_run

    info = export_run(
        Path(args.run), Path(args.out), format=args.format, data=args.data,
        pack_bits=args.pack_bits, dtype=args.dtype,
    )  # fmt: skip
    print(json.dumps(info, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from coqat.train.export import evaluate_path

    res = evaluate_path(
        Path(args.model), data=args.data, val_tokens=args.val_tokens, device=args.device
    )
    print(json.dumps(res, indent=2))
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from coqat.train.quickstart import quickstart

    kw: dict = {k: getattr(args, k) for k in ("tokens", "bits") if getattr(args, k) is not None}
    if args.seeds is not None:
        if args.seeds < 1:
            from coqat.errors import ConfigError

            raise ConfigError("--seeds", f"must be >= 1, got {args.seeds}")
        kw["seeds"] = tuple(range(args.seeds))
    quickstart(Path(args.out), device=args.device, **kw)
    return 0
