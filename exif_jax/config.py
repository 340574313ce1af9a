"""Config files: Python files with `get_config()` (ml_collections) that start from exif_jax.schema.base_config()
and override it; `--config.a.b=value` overrides on top; presets resolved once into plain fields.

load_config(path, overrides) -> a resolved config: what the trainer builds and writes to config.json.
config_file(path) -> a file's get_config() as written (unresolved), for a config built on another one.
upgrade(dict) -> a config.json of any schema version as a resolved config of this one.
"""
from __future__ import annotations

import ast
import copy
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from exif_jax.models import vit
from exif_jax.schema import SCHEMA_VERSION, base_config

VIT_SIZES = ("width", "depth", "heads", "mlp_dim", "patch")


def config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a Python config file, unresolved."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"_exif_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: a config file must define get_config()")
    return module.get_config()


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`get_config()` of a Python config file with "a.b=value" overrides applied, presets resolved."""
    config = config_file(path)
    apply_overrides(config, overrides)
    return resolve(config, source=path)


def resolve(config: ml_collections.ConfigDict, source: str = "config") -> ml_collections.ConfigDict:
    """Fill model.image's sizes from its variant (an explicit size wins over the variant's) and check that
    nothing is left unset; returns the config (changed in place)."""
    img = config.model.image
    if img.kind == "vit":
        preset = vit.decode_variant(img.variant)
        clash = [f"model.image.{k}={img[k]}" for k in VIT_SIZES
                 if img[k] is not None and img[k] != preset.get(k, img[k])]
        if clash:
            sizes = ", ".join(f"{k}={v}" for k, v in preset.items())
            raise ValueError(
                f"{source}: {', '.join(clash)} conflicts with model.image.variant={img.variant!r} ({sizes}); name "
                f"the model you mean in the variant (e.g. 'B/32'), or set variant='' and every size, or unset the "
                f"size (--config.model.image.<size>=None)")
        for key in VIT_SIZES:
            if img[key] is None:
                if key not in preset:
                    raise ValueError(f"{source}: model.image.{key} is not set and model.image.variant "
                                     f"{img.variant!r} does not give it")
                img[key] = preset[key]
    elif img.kind == "resnet":
        img.variant = img.variant or "50"
        if img.variant not in ("tiny", "50", "101", "152"):
            raise ValueError(f"{source}: model.image.variant for a ResNet must be 50, 101, 152 or tiny, "
                             f"got {img.variant!r}")
        if img.width is None:  # base width: torchvision's 64 (timm's stem is fixed there too)
            if img.variant == "tiny":
                raise ValueError(f"{source}: model.image.width (the base width) is needed for variant 'tiny'")
            img.width = 64
    else:
        raise ValueError(f"{source}: model.image.kind must be 'vit' or 'resnet', got {img.kind!r}")
    config.schema = SCHEMA_VERSION
    return config


# Keys renamed since schema version 1 (config.json files written before presets were resolved).
_RENAMED = {("model", "temperature_init"): ("model", "logit_scale_init"),
            ("model", "temperature_max"): ("model", "logit_scale_max"),
            ("model", "learn_temperature"): ("model", "learn_logit_scale"),
            ("data", "spread_window"): None, ("debug",): None}


def _remat_policy(value: Any) -> Any:
    # model.{image,text}.remat was a boolean (rematerialize whole blocks or not) before it named a policy.
    return ("full" if value else "none") if isinstance(value, bool) else value


# Keys whose values changed form (old value -> new value), whatever the file's schema version.
_CONVERTED = {("model", "image", "remat"): _remat_policy, ("model", "text", "remat"): _remat_policy}


def upgrade(raw: Mapping[str, Any], source: str = "config.json") -> ml_collections.ConfigDict:
    """A config.json of any schema version -> a resolved config of this schema (the base's defaults for keys
    added since). Version 1 files built the ViT the variant named whatever its explicit sizes said, so the
    variant's sizes replace them here: the result describes the model that was trained."""
    raw = copy.deepcopy(dict(raw))
    version = int(raw.pop("schema", 1))
    if version > SCHEMA_VERSION:
        raise ValueError(f"{source}: schema version {version} is newer than this exif-jax ({SCHEMA_VERSION})")
    for old, new in _RENAMED.items():
        node = raw
        for k in old[:-1]:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and old[-1] in node:
            value = node.pop(old[-1])
            if new is not None:
                node.setdefault(new[-1], value)
    for path, convert in _CONVERTED.items():
        node = raw
        for k in path[:-1]:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and path[-1] in node:
            node[path[-1]] = convert(node[path[-1]])
    config = base_config()
    _overlay(config, raw, source, ())
    if version == 1 and config.model.image.kind == "vit" and config.model.image.variant not in ("", "tiny"):
        config.model.image.update(vit.decode_variant(config.model.image.variant))
    return resolve(config, source)


def _overlay(config: ml_collections.ConfigDict, raw: Mapping[str, Any], source: str, path: tuple[str, ...]
             ) -> None:
    for key, value in raw.items():
        if key not in config:
            raise KeyError(f"{source}: unknown key {'.'.join(path + (key,))} (not in exif_jax.schema)")
        if isinstance(config[key], ml_collections.ConfigDict):
            _overlay(config[key], value, source, path + (key,))
        else:
            config[key] = tuple(value) if isinstance(value, list) else value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Set "a.b=value" in place; the value is parsed as the type of the existing one ("None" unsets it)."""
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
    if raw == "None" and not isinstance(old, str):
        return None  # unsets a field: a preset (model.image.variant) fills it again
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
