"""Keys of runs and FP trunks (torch-free).

* run key = ``config_hash(config without data.path, code version, data hash)``: the data folder's
  location does not matter, its contents (the manifest's tokenizer and split hashes) do; the code
  version is ``coqat.__version__`` plus the git commit when the source is a git checkout
  (override with ``COQAT_CODE_VERSION`` or ``--code-version`` to reuse results across commits).
* trunk key = hash of what the stable-LR FP trunk depends on: model, data (contents), optimizer,
  warmup, tokens, seed, and the numerics settings (device, compile, precision), plus the code
  version and data hash. Runs with equal trunk keys share their trunk up to their branch step.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from coqat.config import config_hash, flatten
from coqat.provenance import git_commit
from coqat.train.phases import trunk_identity


def code_version() -> str:
    """``COQAT_CODE_VERSION`` if set, else ``<version>+g<commit>`` (or just the version)."""
    env = os.environ.get("COQAT_CODE_VERSION")
    if env:
        return env
    from coqat import __version__

    c = git_commit()
    return f"{__version__}+g{c}" if c else __version__


@functools.lru_cache(maxsize=256)
def data_hash(path: str) -> str:
    """16 hex chars of a prepared data folder's manifest (tokenizer + split hashes), the same
    value as ``TokenDataset.data_hash``; '' when ``path`` is empty or has no manifest yet."""
    if not path:
        return ""
    p = Path(path) / "manifest.json"
    if not p.is_file():
        return ""
    m = json.loads(p.read_text("utf-8"))
    h = hashlib.sha256(str(m.get("tokenizer_sha256", "")).encode())
    for name in sorted(m.get("splits", {})):
        h.update(f"\0{name}:{m['splits'][name].get('sha256', '')}".encode())
    return h.hexdigest()[:16]


def _pathless(cfg):
    return replace(cfg, data=replace(cfg.data, path=""))


def run_key(cfg, version: str | None = None, dhash: str | None = None) -> str:
    """Store key of a run (see module doc)."""
    version = code_version() if version is None else version
    dhash = data_hash(cfg.data.path) if dhash is None else dhash
    return config_hash(_pathless(cfg), version, dhash)


def trunk_key(cfg, version: str | None = None, dhash: str | None = None) -> str:
    """Key of the FP trunk of ``cfg`` (see module doc)."""
    version = code_version() if version is None else version
    dhash = data_hash(cfg.data.path) if dhash is None else dhash
    parts = trunk_identity(_pathless(cfg))
    return "t" + config_hash(parts, version, dhash, length=15)


# grid axes and settings that do not change what is trained: left out of a run's variant
_NOT_VARIANT = ("size", "model.", "tokens", "seed", "qat.bits", "qat.fraction", "qat.schedule",
                "data.path", "data.verify", "data.val_tokens", "eval_every", "checkpoint_every",
                "device", "compile", "precision", "dist.", "perf.")


@functools.lru_cache(maxsize=4096)
def _variant_cached(config_json: str) -> str:
    from coqat.config import from_dict, to_dict
    from coqat.train.config import RunConfig

    raw = json.loads(config_json)
    try:  # fill fields that an older config lacks with their defaults
        full = flatten(to_dict(from_dict(RunConfig, raw)))
    except Exception:  # noqa: BLE001 - a config of another schema: compare it as it is
        full = flatten(raw)
    default = flatten(to_dict(RunConfig()))
    keep = {
        k: v
        for k, v in full.items()
        if not any(k == a or (a.endswith(".") and k.startswith(a)) for a in _NOT_VARIANT)
        and default.get(k) != v
    }
    return ",".join(f"{k}={keep[k]}" for k in sorted(keep))


def variant_of(config: dict | str) -> str:
    """The training settings of a run beyond its grid axes (size, tokens, bits, fraction,
    schedule, seed) that differ from RunConfig's defaults, as ``key=value,...`` ('' = all
    default). Runs of one curve or pair must share it: a knob study's runs do not."""
    blob = config if isinstance(config, str) else json.dumps(config, sort_keys=True)
    return _variant_cached(blob)

