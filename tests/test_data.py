"""Tests for coqat.data: sources, split, tokenizer, prepare, dataset, sampler, sample, CLI."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from coqat.data import (
    BatchSampler,
    TokenDataset,
    load_manifest,
    prepare,
    sample_path,
    unigram_entropy,
    validation_windows,
)
from coqat.data.sources import iter_documents, list_sources
from coqat.data.split import split_of, split_score
from coqat.data.tokenizer import decode, encode_documents, load_tokenizer, train_tokenizer
from coqat.errors import ConfigError, DataError

VOCAB = 512


def _doc(i: int) -> str:
    words = ["int", "return", "struct", "static", "void", "if", "else", "for", "while", "ptr"]
    rng = np.random.default_rng(i)
    body = "\n".join(
        "\t" + " ".join(words[j] for j in rng.integers(0, len(words), 8)) + f" x{i % 7};"
        for _ in range(int(rng.integers(3, 12)))
    )
    return f"/* doc {i} – é ü 中文 */\nint f{i}(void)\n{{\n{body}\n}}\n"


def _write_jsonl(path: Path, docs: list[dict], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    return _write_jsonl(d / "c.jsonl", [{"id": f"doc-{i}", "text": _doc(i)} for i in range(200)])


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare([corpus], out, vocab_size=VOCAB, val_fraction=0.1)
    return out


# --- split ---------------------------------------------------------------------------------


def test_split_deterministic_fraction_and_known_ids():
    ids = [f"doc-{i}" for i in range(10_000)]
    val = [i for i in ids if split_of(i, 0.01) == "val"]
    assert abs(len(val) / len(ids) - 0.01) < 0.004
    assert val == [i for i in ids if split_of(i, 0.01) == "val"]
    # growing the fraction only moves documents train -> val
    assert set(val) <= {i for i in ids if split_of(i, 0.05) == "val"}
    # hard-coded once: stable across processes/machines (no builtin hash())
    assert split_score("doc-1") == pytest.approx(0.10143663572776071, abs=1e-15)
    assert split_score("kernel/sched/core.c", seed=1) == pytest.approx(0.005280820771947884)
    assert [split_of(f"doc-{i}", 0.05) for i in (22, 25, 51, 0, 1, 2)] == ["val"] * 3 + [
        "train"
    ] * 3
    assert split_of("kernel/sched/core.c", 0.01, seed=1) == "val"
    assert split_of("kernel/sched/core.c", 0.01, seed=0) == "train"


# --- sources -------------------------------------------------------------------------------


def test_every_source_format(tmp_path):
    zstd = pytest.importorskip("zstandard")
    docs = [{"id": "a", "text": "alpha"}, {"text": "beta"}, {"id": 3, "text": ""}]
    _write_jsonl(tmp_path / "p.jsonl", docs)
    _write_jsonl(tmp_path / "p.jsonl.xz", docs, lzma.open)
    _write_jsonl(tmp_path / "p.jsonl.gz", docs, gzip.open)
    raw = "".join(json.dumps(d) + "\n" for d in docs).encode()
    (tmp_path / "p.jsonl.zst").write_bytes(zstd.ZstdCompressor().compress(raw))
    for name in ("p.jsonl", "p.jsonl.xz", "p.jsonl.gz", "p.jsonl.zst"):
        got = list(iter_documents([tmp_path / name]))
        assert got == [("a", "alpha"), (f"{name}:2", "beta")], name  # empty text skipped
    (tmp_path / "t.txt").write_text("héllo\n", encoding="utf-8")
    assert list(iter_documents([tmp_path / "t.txt"])) == [(str(tmp_path / "t.txt"), "héllo\n")]

    folder = tmp_path / "tree"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.c").write_text("int x;")
    (folder / "b.h.gz").write_bytes(gzip.compress(b"#define B 1"))
    (folder / "skip.bin").write_bytes(b"\xff")
    (folder / ".hidden.txt").write_text("no")
    _write_jsonl(folder / "a.jsonl", [{"text": "j"}])
    got = list(iter_documents([folder]))
    assert got == [("a.jsonl:1", "j"), ("b.h.gz", "#define B 1"), ("sub/x.c", "int x;")]
    assert [s.name for s in list_sources([folder])] == ["a.jsonl", "b.h.gz", "sub/x.c"]
    assert len(list(iter_documents([folder], max_docs=2))) == 2
    # a suffix filter reads only those files from folders (a .json config is not JSON Lines)
    (folder / "config.json").write_text('{"not": "jsonl"}')
    assert [s.name for s in list_sources([folder], [".c", ".h"])] == ["b.h.gz", "sub/x.c"]
    assert [s.name for s in list_sources([folder / "config.json"], [".c"])] == ["config.json"]
    with pytest.raises(DataError, match=r"suffixes: '\.bin'; allowed: .*\.py"):
        list_sources([folder], [".bin"])
    with pytest.raises(DataError, match="folder holds no input files .*names ending in .rs"):
        list_sources([folder], [".rs"])


def test_zstandard_missing_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "z.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(DataError, match=r"z\.jsonl\.zst.*zstandard"):
        list(iter_documents([tmp_path / "z.jsonl.zst"]))


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        list(iter_documents([tmp_path / "nope.jsonl"]))
    (tmp_path / "empty.jsonl").write_text('\n{"text": ""}\n')
    with pytest.raises(DataError, match="empty corpus.*empty.jsonl"):
        list(iter_documents([tmp_path / "empty.jsonl"]))
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8"):
        list(iter_documents([tmp_path / "latin.jsonl"]))
    (tmp_path / "latin.txt").write_bytes(b"line1\nline2 \xff\n")
    with pytest.raises(DataError, match=r"latin\.txt:2: not valid UTF-8"):
        list(iter_documents([tmp_path / "latin.txt"]))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        list(iter_documents([tmp_path / "bad.jsonl"]))
    (tmp_path / "notext.jsonl").write_text('{"body": "a"}\n')
    with pytest.raises(DataError, match=r'notext\.jsonl:1: JSON line has no "text"'):
        list(iter_documents([tmp_path / "notext.jsonl"]))
    (tmp_path / "corrupt.jsonl.xz").write_bytes(b"not xz at all")
    with pytest.raises(DataError, match=r"corrupt\.jsonl\.xz: cannot read"):
        list(iter_documents([tmp_path / "corrupt.jsonl.xz"]))
    (tmp_path / "nofiles").mkdir()
    with pytest.raises(DataError, match="nofiles: folder holds no input files"):
        list_sources([tmp_path / "nofiles"])


# --- tokenizer -----------------------------------------------------------------------------


def test_tokenizer_round_trip_and_eot():
    tok = train_tokenizer([_doc(i) for i in range(50)], vocab_size=400)
    assert tok.token_to_id("<|endoftext|>") == 0
    texts = ["naïve café – 中文 🙂\r\n\tint x = 0;", "a <|endoftext|> b", "  leading spaces", "x"]
    for t in texts:
        assert decode(tok, tok.encode(t).ids) == t
    ids = encode_documents(tok, texts, 0, np.uint16)
    assert ids.dtype == np.uint16 and (ids == 0).sum() == len(texts) and ids[-1] == 0
    assert decode(tok, ids) == "<|endoftext|>".join(texts) + "<|endoftext|>"
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(["x"], vocab_size=100)


# --- prepare -------------------------------------------------------------------------------


def test_prepare_writes_consistent_directory(prepared, corpus):
    m = load_manifest(prepared)
    raw = json.loads((prepared / "manifest.json").read_text())
    for key in ("format_version", "tokenizer_sha256", "vocab_size", "eot_id", "dtype", "splits",
                "sources", "val_fraction", "created", "bytes_per_token"):  # fmt: skip
        assert key in raw
    assert m.dtype == "uint16" and m.eot_id == 0 and m.vocab_size <= VOCAB
    assert (
        m.tokenizer_sha256 == hashlib.sha256((prepared / "tokenizer.json").read_bytes()).hexdigest()
    )
    assert m.sources[0].sha256 == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert m.sources[0].bytes == corpus.stat().st_size
    assert m.splits["train"].documents + m.splits["val"].documents == 200
    assert m.splits["val"].documents == sum(split_of(f"doc-{i}", 0.1) == "val" for i in range(200))
    for name, s in m.splits.items():
        data = np.fromfile(prepared / s.file, dtype=np.uint16)
        assert len(data) == s.tokens and (prepared / s.file).stat().st_size == 2 * s.tokens
        assert (data == m.eot_id).sum() == s.documents, name
        assert hashlib.sha256(data.tobytes()).hexdigest() == s.sha256
    assert 1.0 < m.bytes_per_token < 6.0
    assert not [p for p in prepared.iterdir() if p.name.startswith(".")]  # no temp files
    # decoding the train file gives back the train documents in order
    tok = load_tokenizer(prepared / "tokenizer.json")
    train = np.fromfile(prepared / "train.bin", dtype=np.uint16)
    texts = decode(tok, train).split("<|endoftext|>")[:-1]
    assert texts == [_doc(i) for i in range(200) if split_of(f"doc-{i}", 0.1) == "train"]


def test_prepare_is_deterministic_and_reuses_tokenizer(prepared, corpus, tmp_path):
    m1 = load_manifest(prepared)
    m2 = prepare([corpus], tmp_path / "again", vocab_size=VOCAB, val_fraction=0.1)
    assert m2.tokenizer_sha256 == m1.tokenizer_sha256 and m2.splits == m1.splits
    m3 = prepare(
        [corpus], tmp_path / "reuse", val_fraction=0.1, tokenizer=prepared / "tokenizer.json"
    )
    assert m3.tokenizer_sha256 == m1.tokenizer_sha256 and m3.splits == m1.splits
    assert TokenDataset(tmp_path / "reuse").data_hash == TokenDataset(prepared).data_hash
    m4 = prepare([corpus], tmp_path / "few", vocab_size=VOCAB, val_fraction=0.1, max_docs=50)
    assert m4.splits["train"].documents + m4.splits["val"].documents == 50
    assert TokenDataset(tmp_path / "few").data_hash != TokenDataset(prepared).data_hash


def test_prepare_rejects_bad_settings(corpus, tmp_path):
    with pytest.raises(ConfigError, match="val_fraction"):
        prepare([corpus], tmp_path / "o", val_fraction=1.0)
    with pytest.raises(ConfigError, match="vocab_size"):
        prepare([corpus], tmp_path / "o", vocab_size=10)
    with pytest.raises(DataError, match="validation split is empty"):
        prepare([corpus], tmp_path / "o", vocab_size=VOCAB, val_fraction=1e-9)
    with pytest.raises(DataError, match="missing.json: tokenizer file not found"):
        prepare([corpus], tmp_path / "o", tokenizer=tmp_path / "missing.json")


def test_failed_prepare_keeps_the_existing_dataset(prepared, corpus, tmp_path):
    """A preparation that fails into an existing dataset leaves it complete and usable: the new
    files are written beside it and swapped in only on success."""
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    before = (out / "manifest.json").read_text()
    bad = tmp_path / "bad.jsonl"
    shutil.copy(corpus, bad)
    with open(bad, "a") as f:
        f.write("{broken\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:201: invalid JSON"):
        prepare([bad], out, vocab_size=VOCAB, val_fraction=0.1)
    assert (out / "manifest.json").read_text() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    for split in ("train", "val"):
        TokenDataset(out, split, verify="full")
    with pytest.raises(DataError, match="tokenizer file not found"):
        prepare([corpus], out, tokenizer=tmp_path / "missing.json")
    assert (out / "manifest.json").read_text() == before


# --- dataset -------------------------------------------------------------------------------


def test_manifest_checks_name_the_file(prepared, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(prepared, d)
    ds = TokenDataset(d, "train")
    assert isinstance(ds.tokens, np.memmap) and not ds.tokens.flags.writeable
    assert len(ds) == ds.manifest.splits["train"].tokens and ds.eot_id == 0
    assert len(ds.data_hash) == 16
    f = d / "train.bin"
    blob = bytearray(f.read_bytes())
    blob[10] ^= 1
    f.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"train\.bin: sha256 does not match"):
        TokenDataset(d, "train")
    TokenDataset(d, "train", verify="size")  # cheap check passes
    TokenDataset(d, "val", verify="full")  # other split untouched
    f.write_bytes(bytes(blob[:-2]))
    with pytest.raises(DataError, match=r"train\.bin: size .* does not match"):
        TokenDataset(d, "train", verify="size")
    with pytest.raises(DataError, match="no split 'test'"):
        TokenDataset(d, "test")
    (d / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json: manifest not found"):
        TokenDataset(d, "val")


def test_batch_sampler_reproducible_and_resumable(prepared):
    ds = TokenDataset(prepared, "train")
    a = BatchSampler(ds, batch_size=4, seq_len=16, seed=7)
    b = BatchSampler(ds, batch_size=4, seq_len=16, seed=7)
    x = a.batch(3)
    assert x.shape == (4, 17) and x.dtype == np.int64
    assert np.array_equal(x, b.batch(3)) and not np.array_equal(x, a.batch(4))
    assert not np.array_equal(x, BatchSampler(ds, 4, 16, seed=8).batch(3))
    starts = np.random.default_rng([7, 3]).integers(0, len(ds) - 16, size=4)
    for row, s in zip(x, starts):
        assert np.array_equal(row, ds.tokens[s : s + 17])
    first = [next(a) for _ in range(3)]
    assert all(np.array_equal(f, a.batch(k)) for k, f in enumerate(first))
    state = a.state_dict()
    assert state == {"seed": 7, "position": 3}
    expected = [a.next() for _ in range(2)]
    c = BatchSampler(ds, batch_size=4, seq_len=16, seed=0)
    c.load_state_dict(state)
    assert all(np.array_equal(e, g) for e, g in zip(expected, [next(c), next(c)]))
    with pytest.raises(DataError, match="fewer than one window"):
        BatchSampler(ds, 2, seq_len=len(ds))


def test_validation_windows(prepared):
    val = TokenDataset(prepared, "val")
    w = validation_windows(val, seq_len=32, n_tokens=200, batch_size=2)
    batches = list(w)
    assert w.n_windows == 6 and w.n_tokens == 192 and not w.truncated and len(w) == 3
    assert [b.shape for b in batches] == [(2, 33)] * 3
    assert all(np.array_equal(p, q) for p, q in zip(batches, list(w)))
    targets = np.concatenate([b[:, 1:].reshape(-1) for b in batches])
    assert np.array_equal(targets, val.tokens[1 : 1 + 192])  # contiguous, no overlap
    big = validation_windows(val, seq_len=32, n_tokens=10**9, batch_size=5)
    assert big.truncated and big.n_windows == (len(val) - 1) // 32
    assert sum(b.shape[0] for b in big) == big.n_windows
    with pytest.raises(DataError, match="fewer than one validation window"):
        validation_windows(val, seq_len=len(val), n_tokens=10, batch_size=1)


def test_unigram_entropy(prepared):
    train, val = TokenDataset(prepared, "train"), TokenDataset(prepared, "val")
    h = unigram_entropy(val)
    assert h == unigram_entropy(train)
    p = np.bincount(train.tokens, minlength=train.vocab_size) + 1.0
    q = np.bincount(val.tokens, minlength=train.vocab_size)
    assert h == pytest.approx(-(q * np.log(p / p.sum())).sum() / q.sum())
    assert 0 < h < math.log(train.vocab_size)


# --- embedded sample and CLI ---------------------------------------------------------------


def test_sample_exists_and_prepares(tmp_path):
    from coqat.data.make_sample import selected

    p = sample_path()
    assert p.is_file() and p.stat().st_size <= 2 * 1024 * 1024
    notice = (p.parent / "NOTICE").read_text()
    assert "GPL-2.0" in notice and "6.1.192" in notice
    docs = list(iter_documents([p], max_docs=60))
    assert all(selected(i, len(t.encode()), 0.02, 65536) for i, t in docs)
    m = prepare([p], tmp_path / "s", vocab_size=VOCAB, val_fraction=0.1, max_docs=60)
    assert m.splits["train"].documents + m.splits["val"].documents == 60
    assert m.splits["val"].tokens > 0 and 1.5 < m.bytes_per_token < 4


def test_cli_prepare_and_info(corpus, tmp_path, capsys):
    from coqat.data import cli

    ap = argparse.ArgumentParser(prog="coqat")
    cli.add_parser(ap.add_subparsers())
    out = tmp_path / "cli"
    args = ap.parse_args(["data", "prepare", str(corpus), "--out", str(out), "--vocab", "300",
                          "--val-fraction", "0.1", "--max-docs", "100"])  # fmt: skip
    args.func(args)
    assert load_manifest(out).vocab_size <= 300
    args = ap.parse_args(["data", "info", str(out), "--verify"])
    args.func(args)
    text = capsys.readouterr().out
    assert "train" in text and "val" in text and "bytes/token" in text

    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    for i in range(12):
        (tree / "pkg" / f"mod{i:02d}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    (tree / "pkg" / "data.json").write_text('{"a": [1, 2]}')  # would fail as JSON Lines
    out = tmp_path / "py"
    args = ap.parse_args(["data", "prepare", str(tree), "--out", str(out), "--vocab", "300",
                          "--val-fraction", "0.3", "--suffix", ".py"])  # fmt: skip
    args.func(args)
    m = load_manifest(out)
    assert m.suffixes == [".py"] and len(m.sources) == 12
    assert all(x.path.endswith(".py") for x in m.sources)
