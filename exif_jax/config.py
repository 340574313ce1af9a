"""Config files: Python files with `get_config()` (ml_collections), plus `--config.a.b=value` overrides."""
from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import ml_collections


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`get_config()` of a Python config file, with "a.b=value" overrides applied."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"_exif_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: a config file must define get_config()")
    config = module.get_config()
    apply_overrides(config, overrides)
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Set "a.b=value" in place; the value is parsed as the type of the existing one."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--config.{item}: expected --config.KEY=VALUE")
        *parents, leaf = key.split(".")
        node = config
        for i, p in enumerate(parents):
            if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
                raise KeyError(f"--config.{key}: no section {'.'.join(parents[:i + 1])!r} in the config")
            node = node[p]
        if leaf not in node:
            raise KeyError(f"--config.{key}: no such key (known here: {sorted(node.keys())})")
        node[leaf] = _parse_like(node[leaf], raw, key)


def _parse_like(old: Any, raw: str, key: str) -> Any:
    try:
        if isinstance(old, bool):
            if raw.lower() in ("1", "true", "yes"):
                return True
            if raw.lower() in ("0", "false", "no"):
                return False
            raise ValueError("expected true/false")
        if isinstance(old, int):
            return int(raw)
        if isinstance(old, float):
            return float(raw)
        if isinstance(old, str):
            return raw
        if isinstance(old, (tuple, list)):
            if raw.strip() == "":
                return ()
            val = ast.literal_eval(raw if raw.strip()[0] in "([" else f"({raw},)")
            return tuple(val) if isinstance(val, (tuple, list)) else (val,)
        if isinstance(old, ml_collections.ConfigDict):
            raise ValueError("is a section; set its keys one by one")
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"--config.{key}={raw}: cannot parse as {type(old).__name__}: {e}") from None
