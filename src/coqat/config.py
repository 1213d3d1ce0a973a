"""Config as data: frozen dataclasses loaded from YAML/TOML/dicts with dotted overrides.

Every config class is a frozen dataclass whose ``__post_init__`` validates its fields and raises
:class:`~coqat.errors.ConfigError` naming the field. The helpers here are generic:

* :func:`from_dict` builds a (nested) dataclass from a plain dict, rejecting unknown keys and
  coercing scalars to the annotated type;
* :func:`load_file` reads YAML (``.yaml``/``.yml``) or TOML (``.toml``);
* :func:`apply_overrides` applies ``a.b.c=value`` strings (values parsed as YAML scalars);
* :func:`to_dict` and :func:`config_hash` give the resolved form saved beside every run.

This module imports only the standard library and pyyaml (no torch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from coqat.errors import ConfigError

T = TypeVar("T")


def to_dict(cfg: Any) -> Any:
    """Plain JSON-able form of a (nested) config dataclass."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(cfg: Any, *extra: str, length: int = 16) -> str:
    """Stable hash of a config (plus extra strings such as a code version or data hash)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    h = hashlib.sha256(blob.encode())
    for e in extra:
        h.update(b"\0" + e.encode())
    return h.hexdigest()[:length]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, field: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise ConfigError naming ``field``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, field)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(field, f"{value!r} matches none of {[_type_name(a) for a in args]}")
    if origin is typing.Literal:
        allowed = get_args(tp)
        if isinstance(value, bool) and all(isinstance(a, str) for a in allowed):
            # YAML 1.1 reads on/off/yes/no as booleans: map them back to the word allowed here
            words = ("on", "true", "yes") if value else ("off", "false", "no")
            value = next((a for a in allowed if a in words), value)
        # allow 4 == 4.0 etc. but not bool for numbers
        for a in allowed:
            if value == a and type(value) is not bool or value is a:
                return a
        raise ConfigError(field, f"{value!r} is not allowed; choose one of {list(allowed)}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(field, f"expected a list, got {value!r}")
        args = get_args(tp)
        elem = args[0] if args else Any
        return tuple(_coerce(v, elem, f"{field}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(field, f"expected a table of {_type_name(tp)} fields, got {value!r}")
        return from_dict(tp, value, prefix=field)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(field, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(field, f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(field, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(field, f"expected a number, got {value!r}")
        out = None
        if isinstance(value, int | float):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                pass
        if out is None:
            raise ConfigError(field, f"expected a number, got {value!r}")
        if not math.isfinite(out):
            raise ConfigError(field, f"must be a finite number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(field, f"expected a string, got {value!r}")
    if tp is Path:
        return Path(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(field, f"expected a table, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    data = dict(data or {})
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(where, f"unknown key; allowed keys are {sorted(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            field = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], field)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and not e.field.startswith(prefix + "."):
            # validators name fields as "<section>.<field>"; drop a section the prefix ends with
            head, _, last = prefix.rpartition(".")
            field = e.field
            if field.split(".", 1)[0] == last:
                field = f"{head}.{field}" if head else field
            else:
                field = f"{prefix}.{field}"
            raise ConfigError(field, str(e).split(": ", 1)[1]) from None
        raise


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"file not found: {p}")
    text = p.read_text()
    if p.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("config", f"{p}: invalid TOML: {e}") from None
    if p.suffix in (".yaml", ".yml", ".json"):
        import yaml

        try:
            out = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError("config", f"{p}: invalid YAML: {e}") from None
        if out is None:
            return {}
        if not isinstance(out, dict):
            raise ConfigError("config", f"{p}: top level must be a mapping")
        return out
    raise ConfigError(
        "config", f"{p}: unknown config format {p.suffix!r}; use .yaml, .yml or .toml"
    )


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b=value`` overrides applied (values parsed as YAML)."""
    import copy

    import yaml

    out = copy.deepcopy(data)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError("override", f"{ov!r} is not of the form key.path=value")
        key, raw = ov.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(key, f"{part!r} is a value, not a table")
            node = nxt
        node[parts[-1]] = value
    return out


def save_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (temp file then rename)."""
    atomic_write_text(Path(path), json.dumps(to_dict(obj), indent=2, sort_keys=True) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename)."""
    atomic_write_bytes(Path(path), text.encode())


def atomic_write_bytes(path: Path, blob: bytes) -> None:
    """Write ``blob`` to ``path`` atomically (temp file, fsync, rename)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check(cond: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless ``cond``."""
    if not cond:
        raise ConfigError(field, message)
