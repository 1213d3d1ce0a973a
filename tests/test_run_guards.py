"""Guards of a run folder: a finished run answers only for its own configuration and data."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_run_config


def test_finished_run_refuses_another_configuration(tiny_data, tmp_path):
    """A run folder holding a finished run of another configuration is refused, the differing
    fields named, exactly as a checkpoint is; the same configuration returns the saved result."""
    from coqat.errors import ConfigError
    from coqat.train.run import execute

    cfg = tiny_run_config(tiny_data, **{"qat.fraction": 0.5, "qat.bits": 2})
    done = execute(cfg, tmp_path / "r")
    assert execute(cfg, tmp_path / "r") == done
    other = tiny_run_config(tiny_data, **{"qat.fraction": 0.5, "qat.bits": 4})
    msg = "finished run of another configuration.*qat.bits: 2.0 -> 4.0"
    with pytest.raises(ConfigError, match=msg):
        execute(other, tmp_path / "r")
    # settings that do not change training may differ
    free = tiny_run_config(tiny_data, **{"qat.fraction": 0.5, "qat.bits": 2, "eval_every": 512})
    assert execute(free, tmp_path / "r") == done
    # without config.json the saved result's config hash still decides
    (tmp_path / "r" / "config.json").unlink()
    with pytest.raises(ConfigError, match="config hash"):
        execute(other, tmp_path / "r")
    # --no-resume trains the new configuration in place
    assert execute(other, tmp_path / "r", resume=False)["bits"] == 4.0


def test_finished_run_refuses_other_data(tiny_data, tmp_path):
    """data.path may move, but a finished run trained on other data is not returned."""
    import shutil

    from coqat.errors import ConfigError
    from coqat.train.run import execute

    cfg = tiny_run_config(tiny_data)
    execute(cfg, tmp_path / "r")
    moved = tmp_path / "moved"
    shutil.copytree(tiny_data, moved)
    assert execute(tiny_run_config(moved), tmp_path / "r")["status"] == "done"
    m = json.loads((moved / "manifest.json").read_text())
    m["splits"]["val"]["sha256"] = "0" * 64
    (moved / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="other data"):
        execute(tiny_run_config(moved, **{"data.verify": "size"}), tmp_path / "r")


class _Payload:
    """An object a weights-only load must not build."""


def test_checkpoints_load_weights_only(tmp_path):
    """Checkpoints hold tensors and plain data and load with weights_only=True; one written
    before the numpy RNG state was stored as a tensor still loads; anything else is refused
    with the file named."""
    import random

    import numpy as np
    import torch

    from coqat.errors import CoqatError
    from coqat.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    np.random.seed(3)
    save_checkpoint(tmp_path / "new.pt", {"rng": rng_state(), "w": torch.ones(2)})
    want = np.random.rand()
    np.random.seed(4)
    set_rng_state(load_checkpoint(tmp_path / "new.pt")["rng"])
    assert np.random.rand() == want
    old = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}  # fmt: skip
    save_checkpoint(tmp_path / "old.pt", {"rng": old})
    set_rng_state(load_checkpoint(tmp_path / "old.pt")["rng"])
    torch.save({"x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CoqatError, match="evil.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
