"""The model card (README.md) of an exported run, rendered from ``config.json["coqat"]``."""

from __future__ import annotations

from typing import Any

from coqat.quant.config import format_bits

VLLM_INT_BITS = (4, 8)  # int widths of vLLM's compressed-tensors weight-only (WNA16) kernels
GRIDS = {1.0: "sign", 1.58: "ternary SEQ", 2.0: "SEQ"}  # else LSQ


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def _loss(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, int | float) and x == x else "n/a"


def _summary(meta: dict[str, Any], name: str, b: str) -> str:
    run = meta.get("run") or {}
    text = f"# {name}: a {b}-bit Llama trained with coqat\n\n"
    if run.get("N"):
        text += (
            f"{run['N']:,} parameters ({run['N_nonemb']:,} non-embedding, {run['N_linear']:,} "
            f"in the block linears, which are quantized to {b} bits), trained on "
            f"{run['D_total']:,} tokens: full precision for {run['D_fp']:,}, then "
            f"quantization-aware training (QAT) for {run['D_qat']:,} (QAT fraction "
            f"f = {run['f']:.3f}, {run['schedule']} schedule). "
        )
    return text + f"Exported by coqat {meta['version']} in the `{meta['format']}` format.\n\n"


def _stored_as(meta: dict[str, Any]) -> str:
    st, fmt = meta["storage"], meta["format"]
    enc = st.get("encoding")
    if fmt == "compressed-tensors" and enc:
        return (
            f"int{enc['int_bits']} codes `{enc['code']}` with scale `{enc['scale']}` "
            "(compressed-tensors `pack-quantized`; lossless: the dequantized weights equal the "
            "trained fake-quantized weights exactly)"
        )
    if fmt == "hf":
        return f"dequantized, dense `{st.get('dtype')}` weights"
    return "coqat's packed codes (`quant_method: coqat`)"


def _rows(meta: dict[str, Any], bits: float, b: str) -> list[tuple[str, str]]:
    run, mc, qc = meta.get("run") or {}, meta["model_config"], meta.get("quant_config") or {}
    st, prov, data = meta["storage"], meta.get("provenance") or {}, meta.get("data") or {}
    per = (
        f"one scale per {qc['group_size']} inputs of a row"
        if qc.get("granularity") == "group"
        else "one scale per row"
    )
    rows = [
        (
            "architecture",
            f"Llama: d_model {mc['d_model']}, {mc['n_layers']} layers, {mc['n_heads']} heads, "
            f"SwiGLU, RoPE theta {mc['rope_theta']:g}, vocab {mc['vocab_size']:,}, context "
            f"{mc['seq_len']}, tied embedding",
        ),
        (
            "block linears",
            f"{b} bits (ParetoQ {GRIDS.get(bits, 'LSQ')} grid, {per}); stored as "
            + _stored_as(meta),
        ),
        ("embedding / LM head (tied)", st["embedding"]),
    ]
    if run.get("N"):
        rows += [
            (
                "QAT",
                f"f = {run['f']:.4f} (requested {run['f_requested']:g}) of D = "
                f"{run['D_total']:,} tokens: D_fp = {run['D_fp']:,}, D_qat = {run['D_qat']:,}; "
                f"{run['schedule']} schedule, peak lr {run['lr']:g}, seed {run['seed']}",
            ),
            (
                "law inputs",
                f"N = {run['N']:,}, D = {run['D_total']:,}, B = {b}, S = D / (N B/8) = "
                f"{run['S_total']:.2f} (S_fp {run['S_fp']:.2f}, S_qat {run['S_qat']:.2f})",
            ),
            (
                "validation loss",
                f"{_loss(run.get('loss'))} nats/token (the FP model before QAT "
                f"{_loss(run.get('loss_fp'))}, its round-to-nearest PTQ "
                f"{_loss(run.get('loss_ptq'))})",
            ),
        ]
    storage = (
        f"model.safetensors {_size(st['file_bytes'])}: block linears {_size(st['linear_bytes'])}, "
        f"scales {_size(st['scale_bytes'])}, embedding {_size(st['embedding_bytes'])}, norms "
        f"{_size(st['other_bytes'])}"
    )
    if run.get("model_bytes"):
        eb = format_bits(run["embed_bits"]) if run.get("embed_bits") else "16"
        storage += (
            f"; the model size the scaling law counts (codes at {b} bits, embedding at {eb} "
            f"bits, 16-bit scales and norms): {_size(run['model_bytes'])}"
        )
    rows.append(("storage", storage))
    if prov.get("config_hash"):
        ex = meta["exported"]
        rows.append(
            (
                "provenance",
                f"trained {prov.get('time')} on {prov.get('device')} with coqat commit "
                f"`{prov.get('commit') or 'unknown'}`, config hash `{prov['config_hash']}`, "
                f"data hash `{prov.get('data_hash')}`; exported {ex['date']} (commit "
                f"`{ex['commit'] or 'unknown'}`)",
            )
        )
    if data:
        srcs = ", ".join(f"`{s['path'].rsplit('/', 1)[-1]}`" for s in data.get("sources", []))
        lic = data.get("license") or (
            "not recorded (no NOTICE or LICENSE beside the corpus); check the corpus's terms "
            "before publishing"
        )
        rows.append(("training data", f"{srcs or 'unknown'}; license: {lic}"))
    return rows


def _usage(meta: dict[str, Any], name: str) -> str:
    fmt, enc = meta["format"], meta["storage"].get("encoding")
    if fmt == "coqat":
        text = (
            "## Load it\n\ncoqat's own format (transformers does not read it):\n\n```python\n"
            f'from coqat.quant import load_export\nmodel, info = load_export("{name}")\n```\n'
        )
    else:
        needs = "" if fmt == "hf" else " (needs `pip install compressed-tensors`)"
        text = (
            f"## Load it\n\nWith transformers{needs}:\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f'tok, model = AutoTokenizer.from_pretrained("{name}"), '
            f'AutoModelForCausalLM.from_pretrained("{name}")\n'
            'print(tok.decode(model.generate(**tok(tok.eos_token, return_tensors="pt"), '
            "do_sample=True, max_new_tokens=64)[0]))\n```\n\n"
            "The prompt `tok.eos_token` starts a new document (documents were separated by it "
            "in training); any text works as a prompt.\n"
        )
    if fmt == "compressed-tensors" and enc:
        n = enc["int_bits"]
        if n in VLLM_INT_BITS:
            serve = (
                f"vLLM serves int{n} pack-quantized weights with its compressed-tensors "
                f"W{n}A16 kernels: `vllm serve {name}`."
            )
        else:
            serve = (
                "vLLM's compressed-tensors kernels serve int4 and int8 weights; these "
                f"int{n} codes load in transformers only. `coqat export RUN --pack-bits 4` "
                "writes the same values as int4 codes, which vLLM serves."
            )
        text += f"\n## Serving\n\n{serve}\n"
    return text + (
        f"\n## Check it\n\n`coqat eval {name}` verifies the sha256 of every tensor file and "
        "recomputes the validation loss; the `coqat` key of `config.json` holds the run's full "
        "configuration (`run_config`), its result and provenance.\n"
    )


def model_card(meta: dict[str, Any], name: str) -> str:
    """Markdown model card: what the model is, how it was trained, how to load it."""
    qc = meta.get("quant_config") or {}
    bits = float(qc.get("bits", (meta.get("run") or {}).get("bits", 0)))
    b = format_bits(bits)
    table = "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in _rows(meta, bits, b))
    return _summary(meta, name, b) + table + "\n" + _usage(meta, name)
