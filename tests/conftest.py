"""Shared fixtures: a small prepared dataset from the embedded sample (built once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared data folder: ~200 documents of the embedded Linux C sample, vocab 512, with a
    5% validation split so evaluation has enough tokens."""
    from coqat.data import prepare, sample_path

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare([sample_path()], out, vocab_size=512, val_fraction=0.05, max_docs=200)
    return out


def tiny_run_config(data_path, **over):
    """A RunConfig small enough to train a few dozen CPU steps in about a second."""
    from coqat.config import apply_overrides, from_dict
    from coqat.train.config import RunConfig

    base = {
        "size": "tiny",
        "model": {"vocab_size": 512, "seq_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 2},
        "data": {"path": str(data_path), "val_tokens": 2048},
        "optim": {"lr": 3e-3, "batch_size": 8},
        "tokens": 8 * 32 * 40,
        "device": "cpu",
        "compile": "off",
        "qat": {"bits": 4, "fraction": 0.25},
    }
    base.pop("size")  # explicit shape above
    return from_dict(RunConfig, apply_overrides(base, [f"{k}={v}" for k, v in over.items()]))


@pytest.fixture(scope="session")
def fake_sweep_store(tmp_path_factory):
    """A results store of a finished fake sweep (``--engine fake``: synthetic losses, no
    training): sizes tiny and 2m, S 20 and 200, bits 2, 4 and FP, six fractions, both
    schedules. Returns the store's path."""
    import os

    from coqat.sweep.spec import expand, spec_from_dict
    from coqat.sweep.store import Store
    from coqat.sweep.worker import work

    d = tmp_path_factory.mktemp("fake-sweep")
    spec = spec_from_dict(
        {
            "name": "r",
            "base": {
                "model": {"seq_len": 64, "vocab_size": 512},
                "optim": {"batch_size": 8},
                "device": "cpu",
            },
            "sizes": ["tiny", "2m"],
            "s_total": [20, 200],
            "bits": [2, 4, 16],
            "fractions": [0, 0.1, 0.25, 0.5, 0.75, 1],
            "schedules": ["fused", "standard"],
        }
    )
    with Store(d / "s.db") as st:
        st.register(expand(spec), "r", d / "root", version="v")
    os.environ["COQAT_FAKE_DELAY"] = "0"
    try:
        work(d / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None)
    finally:
        del os.environ["COQAT_FAKE_DELAY"]
    return d / "s.db"
