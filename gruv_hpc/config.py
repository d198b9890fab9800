"""The config machinery every concern's typed config shares: dataclass defaults, then a file
(TOML or JSON), then ``key=value`` overrides (``build``).

Each concern has its own typed config beside its code: ``dataset.config.PreprocessConfig``,
``training.config.TrainConfig``, ``cluster.config.SlurmConfig``. Every field carries its help
text in ``metadata["help"]`` (``opt``; shown by ``--help-config`` and the CLI's ``--help``). An
unknown key is an error that lists the valid keys. List fields keep their element type.

This module imports neither torch nor numpy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import field
from pathlib import Path

from gruv_hpc.errors import ConfigError  # noqa: F401  (re-exported)


def check_number(key: str, value, positive: bool = False) -> None:
    """A finite number >= 0 (> 0 with ``positive``), or a ConfigError naming ``key``: the one
    wording of this check for every concern's config (and ``gruv analyze``'s arguments)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise ConfigError(f"{key}: must be a finite number {'>' if positive else '>='} 0, got {value}")


def opt(default, help: str, split: bool = True):
    """A config field. ``split=False`` (a list of shell lines): a command-line value is one element,
    never cut at its commas (``export CUDA_VISIBLE_DEVICES=0,1``); several are a TOML array."""
    meta = {"help": help, "split": split}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def help_text(cls) -> str:
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(cls, key: str, value, from_string: bool):
    tp = typing.get_type_hints(cls)[key]
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if optional else tp
    if from_string:
        if optional and value.lower() in ("none", "null", ""):
            return None
        if typing.get_origin(base) is list:
            if value.lstrip().startswith("["):  # a TOML array: ['module load cuda', 'export X=0,1']
                try:
                    return [_element(key, base, v) for v in tomllib.loads(f"v = {value}")["v"]]
                except tomllib.TOMLDecodeError as e:
                    raise ConfigError(f"{key}: {value!r} is not a TOML array ({e})") from None
            if not next(f for f in dataclasses.fields(cls) if f.name == key).metadata.get("split", True):
                return [value] if value.strip() else []
            return [_element(key, base, s) for s in (p.strip() for p in value.split(",")) if s]
        if base is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: may not be None")
    if set(args) == {str, int}:  # workers: a number is an int, any other word is left to validate()
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return value
        raise ConfigError(f"{key}: expected a word or an integer, got {value!r}")
    try:
        if typing.get_origin(base) is list:
            if isinstance(value, str):
                value = [value]
            return [_element(key, base, v) for v in value]
        if base is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if base is bool and not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        if base in (int, float) and isinstance(value, bool):  # float(True) would be 1.0: mem_gb = true
            raise ConfigError(f"{key}: expected {_type_name(base)}, got {str(value).lower()}")
        if base is str and isinstance(value, bool):  # a TOML true for a string key such as data_on_device
            return "true" if value else "false"
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return base(value)
    except ConfigError:
        raise  # already names the key and what is wrong (a list's element, a bool)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {_type_name(base)}, got {value!r}") from None


def _element(key: str, list_type, value):
    """One element of a list field, as the list's element type (list[int] keeps ints, a number
    in a list[str] is refused rather than turned into text)."""
    (tp,) = typing.get_args(list_type) or (str,)
    if isinstance(value, str) and tp is not str:
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a list of {_type_name(tp)}, got element {value!r}") from None
    if tp in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected a list of int, got element {value!r}")
        return tp(value)
    if not isinstance(value, tp) or isinstance(value, bool) and tp is not bool:
        raise ConfigError(f"{key}: expected a list of {_type_name(tp)}, got element {value!r}")
    return value


def parse_value(cls, key: str, text: str):
    """A command-line string as the type of ``cls``'s field ``key`` (what ``build`` does with an
    override)."""
    return _coerce(cls, key, text, from_string=True)


def check_keys(cls, keys, source: str) -> None:
    valid = field_names(cls)
    unknown = [k for k in keys if k not in valid]
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in {source}; valid keys: {', '.join(valid)}")


def read_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse ({e})") from None


def table(raw: dict, key: str, where: str) -> dict:
    """``raw[key]`` as a dict (a TOML table), or a one-line error naming it."""
    v = raw.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: {key}: expected a table, got {v!r}")
    return dict(v)


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"override {item!r}: expected key=value")
        out[k.strip()] = v.strip()
    return out


def build(cls, values: dict | None = None, overrides: dict[str, str] | None = None, source: str = "config"):
    """defaults <- values (typed, e.g. from a file) <- overrides (strings from the command line)."""
    kw = {}
    values = values or {}
    check_keys(cls, values, source)
    for k, v in values.items():
        kw[k] = _coerce(cls, k, v, from_string=False)
    overrides = overrides or {}
    check_keys(cls, overrides, "the command line")
    for k, v in overrides.items():
        kw[k] = _coerce(cls, k, v, from_string=True)
    cfg = cls(**kw)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def diff(a: dict, b: dict, ignore=()) -> list[str]:
    """Keys whose values differ, as 'key: a -> b' strings."""
    keys = sorted((set(a) | set(b)) - set(ignore))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
