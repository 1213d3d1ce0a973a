"""Export files: written atomically with mode 0644, tensor files recorded by sha256 and checked
on load (a same-size corruption must not evaluate to a silently wrong loss)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from coqat.data.sources import file_sha256
from coqat.errors import ConfigError

MODE = 0o644  # files readable by others
DIR_MODE = 0o755
CONFIG = "config.json"


def _finish(tmp: Path, path: Path) -> None:
    os.chmod(tmp, MODE)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (temp file, fsync, rename) with mode 0644."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    _finish(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def copy_file(src: Path, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    _finish(tmp, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> dict:
    """Save a safetensors file atomically with mode 0644; returns its ``{sha256, bytes}``."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    _finish(tmp, path)
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; ConfigError naming it when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError("export", f"{path}: not a readable safetensors file ({e})") from None


def verify_files(folder: Path, files: dict[str, dict]) -> None:
    """Check every recorded file's size and sha256; ConfigError naming the first mismatch."""
    if not files:
        raise ConfigError("export", f"{folder / CONFIG}: records no file checksums (coqat.files)")
    for name, rec in sorted(files.items()):
        p = folder / name
        if not p.is_file():
            raise ConfigError("export", f"{p}: file recorded in {CONFIG} is missing")
        size = p.stat().st_size
        if size != rec.get("bytes") or file_sha256(p) != rec.get("sha256"):
            what = "size" if size != rec.get("bytes") else "sha256"
            raise ConfigError(
                "export",
                f"{p}: {what} does not match the one recorded at export in {CONFIG} "
                f"(coqat.files); the file was modified or corrupted, export the run again",
            )


def read_config(folder: Path) -> dict[str, Any]:
    """An export's config.json; ConfigError naming it when missing or malformed."""
    path = folder / CONFIG
    if not path.is_file():
        raise ConfigError("export", f"{path} not found; not an export folder")
    try:
        cfg = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("export", f"{path}: invalid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError("export", f"{path}: top level must be an object")
    return cfg


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Write an export into a hidden sibling folder and move it to ``out`` only when complete.

    ``out`` may be absent, empty or an earlier coqat export (replaced as a whole); any other
    non-empty folder is refused rather than mixed with. A failure leaves ``out`` untouched.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("export.out", f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_export(out):
        raise ConfigError(
            "export.out", f"{out} is not empty and holds no coqat export; choose a new folder"
        )
    pid = os.getpid()
    stage = out.parent / f".{out.name}.staging-{pid}"
    try:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
    except OSError as e:
        raise ConfigError("export.out", f"cannot write {out}: {e}") from None
    try:
        yield stage
        os.chmod(stage, DIR_MODE)
        if out.exists():
            old = out.parent / f".{out.name}.old-{pid}"
            os.replace(out, old)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _is_export(folder: Path) -> bool:
    try:
        return "coqat" in read_config(folder)
    except ConfigError:
        return False
