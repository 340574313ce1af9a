"""One schema: every config is an override of it, presets resolve once, conflicts are named, old config.json
files upgrade to what was built."""
from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import pytest

from exif_jax import config as cfg
from exif_jax import schema
from exif_jax.models import vit

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py"))


def keys(c: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in c.items():
        out |= keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else {prefix + k}
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_is_an_override_of_the_schema(path):
    if path.stem == "base":  # the schema itself: sizes unset until a variant or sizes are given
        c = cfg.load_config(str(path), ["model.image.variant=S/16"])
    else:
        c = cfg.load_config(str(path))
    base = keys(schema.base_config())
    got = keys(c)  # no exemptions: test hooks are injected by the tests (tests/train_with_hooks.py)
    assert got == base, f"{path.name}: extra {sorted(got - base)}, missing {sorted(base - got)}"
    img = c.model.image
    if img.kind == "vit":  # resolved: plain sizes, whatever the variant
        assert all(isinstance(img[k], int) for k in cfg.VIT_SIZES), {k: img[k] for k in cfg.VIT_SIZES}
    assert c.schema == schema.SCHEMA_VERSION


def test_variant_fills_sizes_and_config_json_records_them():
    c = cfg.load_config(str(REPO / "configs" / "vit_b16.py"))
    assert {k: c.model.image[k] for k in cfg.VIT_SIZES} == vit.decode_variant("B/16")
    recorded = json.loads(c.to_json())
    assert recorded["model"]["image"]["width"] == 768 and recorded["model"]["image"]["patch"] == 16
    b32 = cfg.load_config(str(REPO / "configs" / "vit_b16.py"), ["model.image.variant=B/32"])
    assert (b32.model.image.width, b32.model.image.patch) == (768, 32)
    custom = cfg.load_config(str(REPO / "configs" / "vit_b16.py"),
                             ["model.image.variant=", "model.image.width=384", "model.image.depth=6",
                              "model.image.heads=6", "model.image.mlp_dim=1536", "model.image.patch=32"])
    assert (custom.model.image.width, custom.model.image.depth, custom.model.image.patch) == (384, 6, 32)


def test_a_size_that_disagrees_with_the_variant_is_an_error_naming_both():
    with pytest.raises(ValueError, match=r"model\.image\.width=384, model\.image\.patch=32 conflicts with "
                                         r"model\.image\.variant=.B/16."):
        cfg.load_config(str(REPO / "configs" / "vit_b16.py"), ["model.image.patch=32", "model.image.width=384"])
    with pytest.raises(ValueError, match=r"model\.image\.width=64, .*conflicts with model\.image\.variant='S/16'"):
        cfg.load_config(str(REPO / "configs" / "tiny.py"), ["model.image.variant=S/16"])
    # unsetting the explicit sizes lets the variant fill them
    c = cfg.load_config(str(REPO / "configs" / "tiny.py"),
                        ["model.image.variant=S/16"] + [f"model.image.{k}=None" for k in cfg.VIT_SIZES])
    assert c.model.image.width == vit.decode_variant("S/16")["width"]
    with pytest.raises(ValueError, match=r"model\.image\.depth is not set"):
        cfg.load_config(str(REPO / "configs" / "tiny.py"), ["model.image.depth=None"])


def test_upgrade_reads_a_version_1_config_json_as_what_was_trained():
    """Version 1 files (before presets resolved) carried the base's leftover explicit sizes beside a variant the
    tower builder let win, old key names and test hooks; the upgrade gives the model that was trained."""
    old = json.loads(cfg.load_config(str(REPO / "configs" / "vit_b16.py")).to_json())
    old.pop("schema")
    old["model"]["image"].update(width=64, depth=2, heads=4, mlp_dim=128, patch=8)  # tiny.py's leftovers
    m = old["model"]
    m["temperature_init"], m["temperature_max"], m["learn_temperature"] = m.pop("logit_scale_init"), \
        m.pop("logit_scale_max"), m.pop("learn_logit_scale")
    old["data"].pop("decode"), old["data"].pop("spread_batches")  # keys added since
    old["debug"] = {"poison_steps": [], "slow_save_step": -1}
    up = cfg.upgrade(old)
    assert {k: up.model.image[k] for k in cfg.VIT_SIZES} == vit.decode_variant("B/16")
    assert up.model.logit_scale_init == pytest.approx(1 / 0.07) and up.model.learn_logit_scale is True
    assert up.data.decode == "auto" and "debug" not in up and up.schema == schema.SCHEMA_VERSION
    # a current file round-trips unchanged, and unknown keys are refused by name
    now = json.loads(cfg.load_config(str(REPO / "configs" / "demo.py")).to_json())
    assert json.loads(cfg.upgrade(now).to_json()) == now
    # configs/tiny.py wrote its test hooks into version-2 files too, before they moved to the tests
    hooked = {**now, "debug": {"poison_steps": [3], "slow_save_step": 0, "slow_save_s": 0.0, "step_sleep_s": 0.0}}
    assert json.loads(cfg.upgrade(hooked).to_json()) == now
    with pytest.raises(KeyError, match=r"data\.no_such_key"):
        cfg.upgrade({**now, "data": {**now["data"], "no_such_key": 1}})


def test_upgrade_reads_the_old_boolean_remat_as_a_policy_and_fills_the_speed_knobs():
    """Before the step's speed knobs, model.{image,text}.remat was a boolean and attention/norm_dtype did not exist."""
    now = json.loads(cfg.load_config(str(REPO / "configs" / "vit_b16.py")).to_json())
    for old_value, policy in ((True, "full"), (False, "none")):
        old = json.loads(json.dumps(now))
        old["model"]["image"]["remat"] = old["model"]["text"]["remat"] = old_value
        del old["model"]["attention"], old["model"]["norm_dtype"]
        up = cfg.upgrade(old)
        assert (up.model.image.remat, up.model.text.remat) == (policy, policy)
        assert (up.model.attention, up.model.norm_dtype) == ("xla", "")
    with pytest.raises(ValueError, match=r"model\.image\.remat is a policy now.*true -> 'full'"):
        from flax import nnx

        from exif_jax.models import towers

        c = cfg.load_config(str(REPO / "configs" / "tiny.py"), ["model.image.remat=true"])
        towers.create_model(c, 100, nnx.Rngs(0))


@pytest.mark.slow
def test_the_built_tower_is_the_one_config_json_records():
    """The bug this schema fixes: a variant silently beating explicit sizes in the tower builder."""
    from flax import nnx

    from exif_jax.models import towers

    resolved_then_edited = dict(width=384, depth=3, heads=6, mlp_dim=1536, patch=32)  # variant still 'B/16'
    for overrides, edit, want in ((["model.image.variant=B/32"], {}, (32, 768, 12)),
                                  ([], resolved_then_edited, (32, 384, 3))):
        c = cfg.load_config(str(REPO / "configs" / "vit_b16.py"), overrides)
        c.model.image.update(edit)  # the towers read the fields, never the variant
        model = nnx.eval_shape(lambda: towers.create_model(c, 1000, nnx.Rngs(0)))
        params = nnx.state(model, nnx.Param).flat_state()
        kernel = next(v for k, v in params if "embedding" in "/".join(map(str, k)) and k[-1] == "kernel")
        blocks = {k[2] for k, _ in params if k[0] == "image" and len(k) > 2 and str(k[2]).startswith("encoderblock")}
        assert (kernel.shape[0], kernel.shape[-1], len(blocks)) == want, (overrides, kernel.shape, sorted(blocks))
        assert (c.model.image.patch, c.model.image.width, c.model.image.depth) == want


def restated_defaults(path: Path) -> list[str]:
    """Assignments in a config file that set a key to the schema's own default: `c.a.b = v`, `m.b = v` (after
    `m = c.model`) and `x.update(dict(b=v, ...))`, where v is a literal."""
    import ast

    base, tree = schema.base_config(), ast.parse(path.read_text())
    alias: dict[str, tuple[str, ...]] = {"c": ()}

    def path_of(node: ast.AST) -> tuple[str, ...] | None:
        if isinstance(node, ast.Name):
            return alias.get(node.id)
        if isinstance(node, ast.Attribute):
            head = path_of(node.value)
            return None if head is None else (*head, node.attr)
        return None

    def default(keys: tuple[str, ...]):
        node = base
        for k in keys:
            node = node[k]
        return node

    found = []

    def check(keys: tuple[str, ...], value: ast.AST) -> None:
        try:
            v = ast.literal_eval(value)
        except ValueError:
            return
        if isinstance(default(keys), (tuple, list)):
            v = tuple(v)
        if type(v) is type(default(keys)) and v == default(keys):
            found.append(f"{path.name}: {'.'.join(keys)} = {v!r} is the schema's default")

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            if isinstance(target, ast.Name) and path_of(value) is not None:
                alias[target.id] = path_of(value)  # m = c.model
            elif path_of(target) is not None and path_of(target):
                check(path_of(target), value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
              and path_of(node.func.value) is not None and node.args and isinstance(node.args[0], ast.Call)):
            for kw in node.args[0].keywords:
                check((*path_of(node.func.value), kw.arg), kw.value)
    return found


def test_configs_state_only_what_they_change(tmp_path):
    """schema.py: configs set only what they change; a restated default hides which values are the run's own."""
    found = [r for p in CONFIGS for r in restated_defaults(p)]
    assert not found, "\n".join(found)
    # The check sees what it looks for: tiny.py with two defaults restated.
    probe = tmp_path / "tiny.py"
    probe.write_text((REPO / "configs" / "tiny.py").read_text().replace(
        "    c.data.crop_size = 32\n",
        "    c.data.crop_size = 32\n    m = c.model\n    m.dtype = 'bfloat16'\n    c.train.update(dict(keep=3))\n"))
    assert len(restated_defaults(probe)) == 2
