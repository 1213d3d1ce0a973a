"""Shared fixtures: a small prepared dataset from the embedded sample (built once per session).

Plain helper functions live in ``tests/helpers.py``; test modules import them as ``helpers``
(pytest puts this folder on ``sys.path``, so ``pytest`` and ``python -m pytest`` both collect).
"""

from __future__ import annotations

import os

import pytest

# one BLAS/OpenMP thread per process: the tests train tiny models, where threads only add
# overhead, and on a busy 2-core machine torch's default threads oversubscribe it (a CPU trunk
# test took 32 s with 2 threads at load 10, 2.7 s with 1). Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared data folder: ~200 documents of the embedded Linux C sample, vocab 512, with a
    5% validation split so evaluation has enough tokens."""
    from coqat.data import prepare, sample_path

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare([sample_path()], out, vocab_size=512, val_fraction=0.05, max_docs=200)
    return out


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
