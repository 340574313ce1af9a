"""`exif-jax export`: a SigLIP-shaped checkpoint trained for a few steps on the bundled photos, exported and
reloaded by stock transformers (SiglipModel + AutoTokenizer + image processor), must give the JAX model's
embeddings and logits (f32, max |diff| <= 1e-4) on real crops and real EXIF texts, with identical token ids.
The timm .npz is checked key by key against what timm's big_vision loader reads (timm cannot import here;
benchmarks/timm_parity.py runs timm itself where it imports)."""
from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import SIGLIP_OVERRIDES  # noqa: E402

from exif_jax import cli, exif, train  # noqa: E402
from exif_jax.config import VIT_SIZES  # noqa: E402
from exif_jax.data import pipeline  # noqa: E402
from exif_jax.data.crops import read_rgb  # noqa: E402
from exif_jax.export import hf, parity, timm  # noqa: E402
from exif_jax.tokenizer import BUNDLED_MODEL, Tokenizer  # noqa: E402

REPO = Path(__file__).parents[1]
CONFIG = str(REPO / "configs" / "tiny.py")
PHOTOS = sorted(glob.glob(str(REPO / "exif_jax" / "assets" / "photos" / "*.jpg")))
SHARED = REPO.parent / "shared" / "data"
TOL = 1e-4
# Exact SigLIP (the model author's settings) at the tiny config's sizes: both widths == embed_dim == 64.
SIGLIP = SIGLIP_OVERRIDES
SHORT_TAGS = ("Make", "Model", "Exposure Time", "F-Number")  # real texts short enough to be padded


def load_config(overrides):
    config = train.load_config(CONFIG, overrides)
    config.model.dtype = "float32"
    return config


def random_model(overrides, seed=0):
    from exif_jax.models import towers

    config = load_config(overrides)
    return towers.create_model(config, Tokenizer().vocab_size, nnx.Rngs(seed)), config


def texts_of(config) -> list[str]:
    """Real EXIF texts of the bundled photos: full (longer than max_len: truncated) and short (padded)."""
    tags = [exif.read_tags(p) for p in PHOTOS]
    full = [exif.render_text(t, tag_order=tuple(config.exif.tags), max_value_len=config.exif.max_value_len,
                             style=config.exif.style) for t in tags]
    return full + [exif.render_text(t, tag_order=SHORT_TAGS) for t in tags]


def crops_of(size: int) -> np.ndarray:
    """Two native-resolution crops per bundled photo, placed as the training pipeline places them."""
    rng = np.random.default_rng(0)
    out = [pipeline.random_crops(read_rgb(p), 2, size, rng)[0] for p in PHOTOS]
    return np.concatenate(out)


def assert_parity(model, config, out_dir: str) -> None:
    crops = crops_of(int(config.model.image.size))
    texts = texts_of(config)
    ids, _ = Tokenizer(max_len=int(config.model.text.max_len)).encode_batch(texts)
    assert (ids == 0).any() and (ids[:, -1] != 0).any(), "texts must include padded and truncated ones"
    r = parity.hf_parity(model, config, out_dir, crops, texts)
    assert not any(r["loading_info"].values()), r["loading_info"]  # no missing/unexpected/mismatched keys
    assert r["ids_identical"]
    assert r["attention_mask"] == bool(config.model.text.mask_pad)
    assert r["pixels_max_abs"] <= 1e-6
    print(f"max |diff|: image {r['image_max_abs']:.2e}, text {r['text_max_abs']:.2e}, "
          f"logits {r['logits_max_abs']:.2e} (logit std {r['logit_std']:.3f})")
    assert r["image_max_abs"] <= TOL and r["text_max_abs"] <= TOL and r["logits_max_abs"] <= TOL
    # Different crops and texts must give different embeddings: a constant output would pass the above.
    assert r["image_spread"] > 1e-3 and r["text_spread"] > 1e-3


@pytest.fixture(scope="module")
def trained(trained_workdir, tmp_path_factory):
    """(workdir, export dir): conftest's 4-step exact-SigLIP run on the bundled photos, exported as 'all'."""
    out = tmp_path_factory.mktemp("siglip_export")
    assert cli.main(["export", "--checkpoint", trained_workdir, "--out", str(out), "--format", "all"]) == 0
    return trained_workdir, str(out)


def test_trained_checkpoint_matches_in_transformers(trained):
    from exif_jax import workdir

    wd, out = trained
    model, config, step = workdir.load_model(wd, float32=True)
    assert step == 4
    assert model.b is not None and model.t is not None
    assert_parity(model, config, out)
    cfg = json.loads(Path(out, "config.json").read_text())
    assert cfg["architectures"] == ["SiglipModel"] and cfg["vision_config"]["image_size"] == 32
    pre = json.loads(Path(out, "preprocessor_config.json").read_text())
    assert pre["do_resize"] is False and pre["size"] == {"height": 32, "width": 32}


def test_text_token_ids_are_the_tokenizers(trained):
    """config.json's special ids are ids the exported tokenizer has (pad, eos; no bos), not SigLIP's class
    defaults (CLIP's 49406/49407). transformers 5.24 still warns about those defaults on every SigLIP load, ours
    included: it builds a default SiglipTextConfig to diff against (huggingface/transformers#47612)."""
    _, out = trained
    text = json.loads(Path(out, "config.json").read_text())["text_config"]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert text["bos_token_id"] is None
    assert (text["eos_token_id"], text["pad_token_id"]) == (tok.eos_token_id, tok.pad_token_id)
    assert 0 <= text["pad_token_id"] < text["vocab_size"] and 0 <= text["eos_token_id"] < text["vocab_size"]
    assert len(tok) == text["vocab_size"]


def test_no_pickle_in_export(trained):
    _, out = trained
    names = sorted(os.listdir(out))
    assert "model.safetensors" in names and timm.NPZ_NAME in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))], names
    with np.load(os.path.join(out, timm.NPZ_NAME), allow_pickle=False) as z:
        assert all(z[k].dtype == np.float32 for k in z.files)


def test_variant_mask_pad_identity_head_infonce_clipped_temperature(tmp_path):
    """Options beyond exact SigLIP that map exactly: masked pads (the tokenizer then returns attention_mask),
    no text projection (identity head), InfoNCE (bias 0), and a clipped temperature folded into logit_scale."""
    model, config = random_model(SIGLIP + ["model.text.mask_pad=True", "model.text.head=none",
                                           "loss.kind=infonce", "model.logit_scale_max=5.0"], seed=1)
    assert model.b is None and math.isclose(float(model.logit_scale()), 5.0, rel_tol=1e-6)
    hf.export_hf(model, config, str(tmp_path), tokenizer_model=str(BUNDLED_MODEL))
    assert_parity(model, config, str(tmp_path))


@pytest.mark.parametrize("option,value", [("model.image.pool", "avg"), ("model.image.head", "linear"),
                                          ("model.text.pool", "eos"), ("model.text.pool", "mean"),
                                          ("model.text.causal", "True")])
def test_unexportable_options_are_refused_by_name(option, value, tmp_path, capsys):
    config = load_config(SIGLIP + [f"{option}={value}"])
    with pytest.raises(hf.NotExportable, match=option.replace(".", r"\.")):
        hf.check_siglip_exportable(config)
    # The CLI refuses before restoring anything: a workdir with only its config is enough.
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "config.json").write_text(config.to_json())
    rc = cli.main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "hf"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{option}=" in err and value in err, err
    assert not (tmp_path / "o").exists()


RESNET = ["model.image.kind=resnet", "model.image.variant=tiny", "model.image.width=8"]


def randomize_batch_stats(model, seed: int = 0) -> None:
    """Trained-looking BatchNorm statistics: fresh ones (mean 0, var 1) would hide a dropped or swapped one."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
        shape = var[...].shape
        var[...] = jnp.asarray(rng.uniform(0.5, 2.0, shape) if path[-1] == "var" else rng.normal(0, 0.2, shape),
                               jnp.float32)


@pytest.mark.parametrize("extra", [
    ["model.text.pool=mean"],  # tiny's text tower: masked pads, mean-pooled, Linear head; InfoNCE
    SIGLIP + ["model.image.head=linear", "model.image.head_bias=False"],  # last-pooled SigLIP text, sigmoid
], ids=["mean-text", "siglip-text"])
def test_resnet_towers_match_in_transformers(extra, tmp_path):
    """ResNet image towers: ResNetForImageClassification (logits = embedding) + SiglipTextModel, pooled and
    scaled as dual_encoder.json says, give the JAX embeddings and logits."""
    from exif_jax.export import hf_towers

    model, config = random_model(RESNET + extra, seed=2)
    randomize_batch_stats(model)
    with pytest.raises(hf.NotExportable, match=r"model\.image\.kind='resnet'"):
        hf.check_siglip_exportable(config)
    hf_towers.export_towers(model, config, str(tmp_path), tokenizer_model=str(BUNDLED_MODEL))
    assert sorted(os.listdir(tmp_path)) == ["dual_encoder.json", "image", "text"]
    cfg = json.loads(Path(tmp_path, "image", "config.json").read_text())
    assert cfg["architectures"] == ["ResNetForImageClassification"] and cfg["depths"] == [1, 1, 1, 1]
    assert_parity(model, config, str(tmp_path))
    # The statistics BatchNorm uses at inference are the exported ones (not train-mode batch statistics).
    r = parity.hf_parity(model, config, str(tmp_path), crops_of(32)[:4], texts_of(config)[:2])
    assert r["image_max_abs"] <= TOL


@pytest.mark.parametrize("option,value", [("model.text.pool", "eos"), ("model.text.causal", "True"),
                                          ("model.text.kind", "distilbert")])
def test_unexportable_resnet_options_are_refused_by_name(option, value, tmp_path, capsys):
    config = load_config(RESNET + [f"{option}={value}"])  # distilbert: with tiny's Linear text head
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "config.json").write_text(config.to_json())
    rc = cli.main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "hf"])
    err = capsys.readouterr().err
    want = "model.text.head='linear'" if value == "distilbert" else f"{option}="
    assert rc == 2 and want in err, err
    assert not (tmp_path / "o").exists()


def test_timm_resnet_needs_timms_64_channel_stem(tmp_path, capsys):
    with pytest.raises(hf.NotExportable, match=r"model\.image\.width=8"):
        timm.timm_spec(load_config(RESNET))
    (tmp_path / "ckpt").mkdir()  # the CLI refuses before restoring: a workdir with only its config
    (tmp_path / "config.json").write_text(load_config(RESNET).to_json())
    rc = cli.main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "all"])
    assert rc == 2 and "model.image.width=8" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    spec = timm.timm_spec(load_config(["model.image.kind=resnet", "model.image.variant=50"]))
    # num_classes: the tiny config's embed_dim
    assert spec["model_name"] == "resnet50" and spec["kwargs"] == {"layers": [3, 4, 6, 3], "num_classes": 32}
    assert "timm.models.load_checkpoint(model, 'w.safetensors')" in timm.usage(spec, "w.safetensors")


def test_tokenizer_ids_identical(trained):
    """Every EXIF text we have (bundled photos, the shared photos when present) and awkward strings."""
    _, out = trained
    texts = texts_of(load_config(SIGLIP))
    if SHARED.is_dir():
        for p in sorted(glob.glob(str(SHARED / "**" / "*.jp*g"), recursive=True)):
            try:
                texts.append(exif.render_text(exif.read_tags(p)))
            except (exif.ExifError, OSError):
                pass
    texts += ["", "x", "  two  spaces ", " lead", "▁lead", "ünïcode ★ 1/250", "<unk> </s> <pad>", "a\nb\tc",
              ",Make:,Make:Make:"]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for max_len in (64, 16):
        ours, _ = Tokenizer(max_len=max_len).encode_batch(texts)
        theirs = tok(texts, padding="max_length", max_length=max_len, truncation=True)["input_ids"]
        bad = [t for t, a, b in zip(texts, ours, np.asarray(theirs)) if not np.array_equal(a, b)]
        assert not bad, f"{len(bad)} of {len(texts)} texts tokenize differently, e.g. {bad[:3]}"


# ----------------------------------------------------------------------------- timm

def reference_timm_keys(kwargs: dict) -> dict[str, tuple[int, ...]]:
    """Independent reference of timm's reader (timm cannot import in this venv; exif_jax has no copy of it): the
    keys (with shapes) that timm's `_load_weights` reads from a big_vision .npz for VisionTransformer(**kwargs),
    written from timm/models/vision_transformer.py (huggingface/pytorch-image-models@0041cb7): prefix
    auto-detected from 'params/img/embedding/kernel'; big_vision names (MHA _0, MlpBlock _0, LayerNorm_1)."""
    d, depth, heads = kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"]
    p, hd, mlp = kwargs["patch_size"], kwargs["embed_dim"] // kwargs["num_heads"], int(d * kwargs["mlp_ratio"])
    n = (kwargs["img_size"] // p) ** 2
    pre = "params/img/"
    keys = {"embedding/kernel": (p, p, 3, d), "embedding/bias": (d,), "pos_embedding": (1, n, d),
            "Transformer/encoder_norm/scale": (d,), "Transformer/encoder_norm/bias": (d,)}
    if kwargs.get("class_token", True):
        keys["cls"] = (1, 1, d)
    if kwargs["num_classes"]:
        keys.update({"head/kernel": (d, kwargs["num_classes"]), "head/bias": (kwargs["num_classes"],)})

    def mha(prefix):
        for n_ in ("query", "key", "value"):
            keys[f"{prefix}{n_}/kernel"] = (d, heads, hd)
            keys[f"{prefix}{n_}/bias"] = (heads, hd)
        keys[f"{prefix}out/kernel"] = (heads, hd, d)
        keys[f"{prefix}out/bias"] = (d,)

    def mlp_block(prefix):
        keys.update({f"{prefix}Dense_0/kernel": (d, mlp), f"{prefix}Dense_0/bias": (mlp,),
                     f"{prefix}Dense_1/kernel": (mlp, d), f"{prefix}Dense_1/bias": (d,)})

    if kwargs["global_pool"] == "map":
        keys["MAPHead_0/probe"] = (1, 1, d)
        mha("MAPHead_0/MultiHeadDotProductAttention_0/")
        keys.update({"MAPHead_0/LayerNorm_0/scale": (d,), "MAPHead_0/LayerNorm_0/bias": (d,)})
        mlp_block("MAPHead_0/MlpBlock_0/")
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_1"):
            keys.update({f"{b}{ln}/scale": (d,), f"{b}{ln}/bias": (d,)})
        mha(f"{b}MultiHeadDotProductAttention_0/")
        mlp_block(f"{b}MlpBlock_0/")
    return {pre + k: v for k, v in keys.items()}


def check_npz(out_dir: str) -> dict:
    spec = json.loads(Path(out_dir, timm.TIMM_JSON).read_text())
    with np.load(os.path.join(out_dir, spec["npz"]), allow_pickle=False) as z:
        got = {k: z[k].shape for k in z.files}
    want = reference_timm_keys(spec["kwargs"])
    missing = {k: s for k, s in want.items() if got.get(k) != s}
    assert not missing, f"keys timm reads that are absent or mis-shaped: {missing}"
    # Exactly timm's set under the image prefix, and no scanned-layout key (timm would switch layouts).
    assert sorted(k for k in got if k.startswith("params/img/")) == sorted(want)
    assert "params/img/Transformer/encoderblock/LayerNorm_0/scale" not in got
    assert int(spec["kwargs"]["embed_dim"] * spec["kwargs"]["mlp_ratio"]) == want[
        "params/img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias"][0]
    return spec


def test_timm_npz_has_every_key_timm_reads(trained, tmp_path):
    spec = check_npz(trained[1])
    assert spec["kwargs"]["global_pool"] == "map" and spec["kwargs"]["class_token"] is False
    assert spec["kwargs"]["act_layer"] == "gelu_tanh" and spec["kwargs"]["num_classes"] == 0
    for extra, pool in ((["model.image.pool=avg", "model.image.head=linear", "model.image.head_bias=False"], "avg"),
                        (["model.image.pool=cls"], "token")):
        model, config = random_model(SIGLIP + extra)
        out = tmp_path / pool
        timm.export_timm(model, config, str(out))
        spec = check_npz(str(out))
        assert spec["kwargs"]["global_pool"] == pool
    assert spec["kwargs"]["no_embed_class"] is True  # cls: our cls token gets no position embedding
    b16 = load_config(SIGLIP + ["model.image.variant=B/16"] + [f"model.image.{k}=None" for k in VIT_SIZES])
    assert timm.timm_spec(b16)["model_name"] == "vit_base_patch16_siglip_224"


def reference_timm_n2p(w: np.ndarray, t: bool = True):
    """Independent reference of timm's _n2p (the conversion under test is ours, export/layout.py): big_vision
    array -> torch tensor (4-D HWIO -> OIHW, 3-D [2,0,1], 2-D transposed)."""
    if t:
        w = {4: lambda a: a.transpose(3, 2, 0, 1), 3: lambda a: a.transpose(2, 0, 1),
             2: lambda a: a.T}.get(w.ndim, lambda a: a)(w)
    return torch.from_numpy(np.ascontiguousarray(w))


def test_timm_npz_through_timm_conversions_reproduces_jax(trained):
    """CPU stand-in for timm: apply timm's conversions to the .npz (qkv concat, _n2p transposes), put the
    resulting timm-named tensors into the structurally identical SiglipVisionModel, compare with JAX."""
    from exif_jax import workdir

    wd, out = trained
    spec = json.loads(Path(out, timm.TIMM_JSON).read_text())
    with np.load(os.path.join(out, spec["npz"]), allow_pickle=False) as z:
        w = {k[len("params/img/"):]: z[k] for k in z.files if k.startswith("params/img/")}
    sd = {"embeddings.patch_embedding.weight": reference_timm_n2p(w["embedding/kernel"]),
          "embeddings.patch_embedding.bias": reference_timm_n2p(w["embedding/bias"]),
          "embeddings.position_embedding.weight": reference_timm_n2p(w["pos_embedding"], t=False)[0],
          "post_layernorm.weight": reference_timm_n2p(w["Transformer/encoder_norm/scale"]),
          "post_layernorm.bias": reference_timm_n2p(w["Transformer/encoder_norm/bias"])}

    def qkv(prefix, names):
        return (torch.cat([reference_timm_n2p(w[f"{prefix}{n}/kernel"], t=False).flatten(1).T for n in names]),
                torch.cat([reference_timm_n2p(w[f"{prefix}{n}/bias"], t=False).reshape(-1) for n in names]))

    def block(src, dst, attn, norms):
        mha = f"{src}MultiHeadDotProductAttention_0/"
        qkv_w, qkv_b = qkv(mha, ("query", "key", "value"))  # timm: blocks.i.attn.qkv
        for j, n in enumerate("qkv"):
            dim = qkv_w.shape[0] // 3
            sd[f"{dst}{attn}.{n}_proj.weight"] = qkv_w[j * dim:(j + 1) * dim]
            sd[f"{dst}{attn}.{n}_proj.bias"] = qkv_b[j * dim:(j + 1) * dim]
        sd[f"{dst}{attn}.out_proj.weight"] = reference_timm_n2p(w[f"{mha}out/kernel"]).flatten(1)
        sd[f"{dst}{attn}.out_proj.bias"] = reference_timm_n2p(w[f"{mha}out/bias"])
        for r in range(2):
            sd[f"{dst}mlp.fc{r + 1}.weight"] = reference_timm_n2p(w[f"{src}MlpBlock_0/Dense_{r}/kernel"])
            sd[f"{dst}mlp.fc{r + 1}.bias"] = reference_timm_n2p(w[f"{src}MlpBlock_0/Dense_{r}/bias"])
        for ln, name in norms:
            sd[f"{dst}{name}.weight"] = reference_timm_n2p(w[f"{src}{ln}/scale"])
            sd[f"{dst}{name}.bias"] = reference_timm_n2p(w[f"{src}{ln}/bias"])

    for i in range(spec["kwargs"]["depth"]):
        block(f"Transformer/encoderblock_{i}/", f"encoder.layers.{i}.", "self_attn",
              (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")))
    # timm's attn_pool: latent <- probe, q <- query, kv <- concat(key, value), proj <- out.
    pool = "MAPHead_0/"
    block(pool, "head.", "attention", (("LayerNorm_0", "layernorm"),))
    for kind in ("weight", "bias"):  # torch.nn.MultiheadAttention packs q, k, v
        sd[f"head.attention.in_proj_{kind}"] = torch.cat([sd.pop(f"head.attention.{n}_proj.{kind}") for n in "qkv"])
    sd["head.probe"] = reference_timm_n2p(w[f"{pool}probe"], t=False)

    model, config, _ = workdir.load_model(wd, float32=True)
    vcfg = transformers.SiglipConfig.from_pretrained(out).vision_config
    vision = transformers.SiglipVisionModel(vcfg).eval()
    missing, unexpected = vision.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    crops = crops_of(int(config.model.image.size))
    x = (crops.astype(np.float32) / 255 - np.asarray(spec["mean"])) / np.asarray(spec["std"])
    with torch.no_grad():
        got = vision(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).pooler_output
    want = np.asarray(nnx.jit(lambda m, x: m.image(x))(model, crops))
    assert np.abs(got.numpy() - want).max() <= TOL


def test_corrupt_export_is_refused_by_the_parity_check(tmp_path):
    """The export records its weights' digests (digests.json); the parity check verifies them before loading."""
    model, config = random_model(SIGLIP, seed=3)
    hf.export_hf(model, config, str(tmp_path), tokenizer_model=str(BUNDLED_MODEL))
    files = json.loads(Path(tmp_path, "digests.json").read_text())["files"]
    assert list(files) == ["model.safetensors"]
    weights = Path(tmp_path, "model.safetensors")
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{weights}: corrupt: model\.safetensors: expected crc32c"):
        parity.hf_parity(model, config, str(tmp_path), crops_of(32)[:2], texts_of(config)[:2])
