"""A prepared dataset survives a failed re-preparation, and training refuses modified data."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def own_data(tiny_data, tmp_path):
    """A private copy of the session's prepared data (these tests modify it)."""
    out = tmp_path / "data"
    shutil.copytree(tiny_data, out)
    return out


def test_prepare_replaces_a_dataset_on_success(own_data):
    from coqat.data import TokenDataset, prepare, sample_path

    m = prepare([sample_path()], own_data, vocab_size=300, val_fraction=0.1, max_docs=50)
    assert m.vocab_size == 300
    TokenDataset(own_data, "train", verify="full")
    assert not [p.name for p in own_data.iterdir() if p.name.startswith(".")]
