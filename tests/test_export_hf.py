"""A real client loads coqat's exports: transformers (+ compressed-tensors) at every bit width
gets the weights bit for bit, the loss of `coqat eval`, and generates text.

Needs the optional extra ``.[hf]`` (transformers, compressed-tensors); skipped without it.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_run_config

transformers = pytest.importorskip(
    "transformers", reason="the hf extra is not installed: pip install -e '.[hf]'"
)
pytest.importorskip(
    "compressed_tensors", reason="the hf extra is not installed: pip install -e '.[hf]'"
)

# bit width -> granularity: every grid (sign, ternary and 2-bit SEQ, LSQ) per row and per group
WIDTHS = {1.0: "row", 1.58: "group", 2.0: "row", 3.0: "group", 4.0: "row", 8.0: "group"}


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers():
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # progress bars and notes, not failures
    transformers.logging.disable_progress_bar()
    yield
    transformers.logging.set_verbosity(verbosity)
    transformers.logging.enable_progress_bar()


def _hf_val_loss(hf_model, cfg) -> float:
    """Validation loss computed the transformers way (``labels`` shifted inside the model) on
    the windows and batches `coqat eval` uses, weighted as it weights them."""
    from coqat.data import TokenDataset, validation_windows

    ds = TokenDataset(cfg.data.path, "val")
    total = count = 0.0
    for arr in validation_windows(ds, cfg.model.seq_len, cfg.data.val_tokens, cfg.optim.micro):
        ids = torch.from_numpy(arr)
        with torch.no_grad():
            loss = hf_model(input_ids=ids, labels=ids).loss
        n = ids[:, 1:].numel()
        total, count = total + float(loss) * n, count + n
    return total / count


def _train_and_export(tmp_path, data, bits, gran, fmt="compressed-tensors", **kw):
    from coqat.train.export import export_run
    from coqat.train.run import execute

    cfg = tiny_run_config(data, **{"qat.bits": bits, "qat.fraction": 0.5, "tokens": 8 * 32 * 6,
                                   "qat.granularity": gran, "qat.group_size": 16})  # fmt: skip
    run = tmp_path / "run"
    res = execute(cfg, run)
    export_run(run, tmp_path / "export", format=fmt, **kw)
    return res, tmp_path / "export"


def _assert_same_weights(hf_model, export_dir):
    """Every transformers weight equals coqat's dequantized weight exactly: a drift in names
    (a missing/renamed tensor) or scales (a re-encoding off by a factor) fails here. Call after
    a forward: compressed-tensors decompresses the packed weights on the first one."""
    from coqat.quant import hf_module, load_export

    coqat_model, _ = load_export(export_dir)
    want = {}
    for k, v in coqat_model.state_dict().items():
        mod, _, leaf = k.rpartition(".")
        want[f"{hf_module(mod)}.{leaf}"] = v
    kept = ("lm_head.weight", ".weight_scale", ".weight_shape")  # kept beside the weight
    got = {k: v for k, v in hf_model.state_dict().items() if not k.endswith(kept)}
    assert set(got) == set(want)
    for k, v in got.items():
        assert torch.equal(v.float(), want[k]), k
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("bits", list(WIDTHS))
def test_transformers_loads_compressed_tensors_export(tiny_data, tmp_path, bits):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from coqat.config import from_dict
    from coqat.train.config import RunConfig
    from coqat.train.export import evaluate_path

    res, out = _train_and_export(tmp_path, tiny_data, bits, WIDTHS[bits])
    coqat_loss = evaluate_path(out, device="cpu")["val_loss"]
    assert coqat_loss == pytest.approx(res["loss"], abs=1e-6)  # lossless re-encoding

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    assert info["mismatched_keys"] == set() and not info["error_msgs"], info
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    cfg = from_dict(RunConfig, json.loads((out / "config.json").read_text())["coqat"]["run_config"])
    hf_loss = _hf_val_loss(model.eval(), cfg)
    assert hf_loss == pytest.approx(coqat_loss, abs=2e-5)
    _assert_same_weights(model, out)

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token_id == model.generation_config.eos_token_id == 0  # the data's EOT
    assert tok.model_max_length == cfg.model.seq_len
    prompt = tok("static int", return_tensors="pt")
    gen = model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 6
    text = tok.decode(gen[0])
    assert text.startswith("static int") and len(text) > len("static int")


def test_transformers_loads_hf_export(tiny_data, tmp_path):
    from transformers import AutoModelForCausalLM

    from coqat.config import from_dict
    from coqat.train.config import RunConfig
    from coqat.train.export import evaluate_path

    _, out = _train_and_export(tmp_path, tiny_data, 2.0, "row", fmt="hf", dtype="float32")
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"]), info
    assert getattr(model.config, "quantization_config", None) is None
    _assert_same_weights(model, out)
    coqat_loss = evaluate_path(out, device="cpu")["val_loss"]
    cfg = from_dict(RunConfig, json.loads((out / "config.json").read_text())["coqat"]["run_config"])
    assert _hf_val_loss(model.eval(), cfg) == pytest.approx(coqat_loss, abs=2e-5)


def test_compressed_tensors_accepts_the_quantization_config(tiny_data, tmp_path):
    """compressed-tensors' own schema validates what coqat writes (no transformers load)."""
    from compressed_tensors.quantization import QuantizationConfig

    from coqat.model.config import ModelConfig
    from coqat.model.llama import Llama
    from coqat.quant import QuantConfig, export, prepare

    for bits, gran in WIDTHS.items():
        m = Llama(ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=512, seq_len=16))
        prepare(m, QuantConfig(bits=bits, granularity=gran, group_size=16))
        out = export(m, tmp_path / str(bits), tokenizer_json=tiny_data / "tokenizer.json")
        qc = json.loads((out / "config.json").read_text())["quantization_config"]
        parsed = QuantizationConfig.model_validate(qc)
        w = parsed.config_groups["group_0"].weights
        assert (
            w.type == "int"
            and w.symmetric
            and getattr(w.strategy, "value", w.strategy)
            == ("channel" if gran == "row" else "group")
        )
