"""A prepared dataset survives a failed re-preparation, and training refuses modified data."""

from __future__ import annotations

import json
import os
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
    assert not [p.name for p in own_data.iterdir() if p.name.endswith(".tmp")]


def _flip_same_size(path, offset=1000):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(2)
        f.seek(offset)
        f.write(bytes(x ^ 0x5A for x in b))


def test_training_refuses_a_same_size_corruption(own_data, tmp_path):
    """The default run config checks the token files' hashes: a corruption that keeps the size
    (even with the mtime set back) is refused before training."""
    from helpers import tiny_run_config

    from coqat.errors import DataError
    from coqat.train.run import execute

    cfg = tiny_run_config(own_data, **{"qat.fraction": 0.5})
    assert cfg.data.verify == "hash"
    assert execute(cfg, tmp_path / "ok")["status"] == "done"
    train = own_data / "train.bin"
    st = train.stat()
    _flip_same_size(train)
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert train.stat().st_size == st.st_size
    with pytest.raises(DataError, match="train.bin: sha256 does not match"):
        execute(cfg, tmp_path / "bad")
    assert not (tmp_path / "bad" / "result.json").exists()


def test_training_refuses_an_edited_manifest_hash(own_data, tmp_path):
    from coqat.data import TokenDataset
    from coqat.errors import DataError

    TokenDataset(own_data, "val", verify="hash")  # hashed and cached
    m = json.loads((own_data / "manifest.json").read_text())
    m["splits"]["val"]["sha256"] = "0" * 64
    (own_data / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="val.bin: sha256 does not match"):
        TokenDataset(own_data, "val", verify="hash")


def test_hashes_are_checked_once_per_file_version(own_data, monkeypatch):
    """'hash' reads each token file once; later checks (other processes too: the cache is a file)
    cost a stat, until the file changes."""
    from coqat.data import TokenDataset, verify

    calls = []
    real = verify.file_sha256
    monkeypatch.setattr(verify, "file_sha256", lambda p: calls.append(p.name) or real(p))
    TokenDataset(own_data, "train", verify="hash")
    TokenDataset(own_data, "val", verify="hash")
    assert sorted(calls) == ["train.bin", "val.bin"]
    verify._MEMO.clear()  # as a new process sees it
    TokenDataset(own_data, "train", verify="hash")
    assert sorted(calls) == ["train.bin", "val.bin"]
    assert (own_data / verify.CACHE_NAME).is_file()
    data = (own_data / "val.bin").read_bytes()
    (own_data / "val.bin").write_bytes(data)  # same bytes, a new version of the file
    TokenDataset(own_data, "val", verify="hash")
    assert sorted(calls) == ["train.bin", "val.bin", "val.bin"]


def test_hash_cache_falls_back_to_the_user_cache(own_data, tmp_path, monkeypatch):
    """A read-only data folder keeps its verdicts under $XDG_CACHE_HOME."""
    import coqat.config
    from coqat.data import TokenDataset, verify

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (own_data / verify.CACHE_NAME).unlink(missing_ok=True)  # copied with the session's data
    verify._MEMO.clear()
    real = coqat.config.atomic_write_text

    def write(path, text):
        if path.parent == own_data:
            raise PermissionError(13, "Permission denied", str(path))
        real(path, text)

    monkeypatch.setattr(coqat.config, "atomic_write_text", write)
    TokenDataset(own_data, "val", verify="hash")
    assert not (own_data / verify.CACHE_NAME).exists()
    assert list((tmp_path / "cache" / "coqat" / "sha256").glob("*.json"))
