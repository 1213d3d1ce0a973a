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
