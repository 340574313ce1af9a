"""Importing the paper's released PyTorch checkpoint: the file is built here in the official layout (a
torchvision-named ResNet-50 + transformers' DistilBertModel at distilbert-base-uncased size, random weights,
inside EXIFNet's CLIP shell), imported with `exif-jax import-official`, and both towers must reproduce the
PyTorch forward on real photo crops and real EXIF texts; the WordPiece tokenizer must give
DistilBertTokenizer's ids; bad files must be refused by name with nothing written."""
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from exif_jax import cli, exif  # noqa: E402
from exif_jax.export import official as importer  # noqa: E402
from exif_jax.wordpiece import WordPiece, normalize, pre_tokenize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "exif_jax" / "assets" / "photos").glob("*.jpg"))
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
LOGIT_SCALE = 4.6  # exp = 99.48: tells the file's scale apart from the config's default 100
TRICKY = [
    "", "   ", "Make: Canon, Model: Canon EOS 20D", "ÉXIF Ñikon Straße İstanbul ΟΔΟΣ", "f/2.8 1/250sec -1/3 EV",
    "中文テキスト한국어 mixed", "tab\tnew\nline\rcr\x0bvt\x85nel\u2028ls\xa0nbsp", "ctl\x00\x01\u200b\ufeff\ufffdend",
    "[CLS] literal [SEP] and [cls] [MASK]x[PAD][UNK", "a" * 101, "b" * 100,
    "ﬁne µs 50° ½ €5 — “quoted”",
    "emoji \U0001F600 and café \u0301", "x" * 700,
]


# ------------------------------------------------------------------------------- the official layout in torch

class ReferenceBottleneck(torch.nn.Module):
    """Independent reference: torchvision's Bottleneck (v1.5), same attribute names (the importer under test
    maps these names; torchvision does not import beside this torch)."""

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        nn, cout = torch.nn, planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ReferenceResNet50(torch.nn.Module):
    """Independent reference: torchvision.models.resnet50's module tree, the paper's image tower as its file
    stores it (torchvision does not import beside this torch)."""

    def __init__(self, num_classes: int = 768):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, blocks in enumerate((3, 4, 6, 3)):
            layer = []
            for j in range(blocks):
                layer.append(ReferenceBottleneck(cin, 64 * 2**i, 2 if i > 0 and j == 0 else 1))
                cin = 64 * 2**i * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _randomize_bn(net: torch.nn.Module, g: torch.Generator) -> None:
    """Trained-looking BatchNorm affine parameters (else BN is nearly the identity)."""
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                # Small last-BN gains keep 16 residual additions at O(1), as trained ResNets have.
                lo, hi = (0.05, 0.2) if name.endswith("bn3") else (0.5, 1.0)
                m.weight.copy_(lo + (hi - lo) * torch.rand(n, generator=g))
                m.bias.copy_(0.05 * torch.randn(n, generator=g))


def _measure_bn(net: torch.nn.Module, crops: np.ndarray) -> None:
    """Running statistics measured on real crops (one train-mode pass, cumulative average), as a trained
    network has them: every layer then sees normalized activations, so the embedding depends on the crop.
    Made-up statistics leave a random ResNet's output nearly constant (crops ~4e-4 apart in unit embedding,
    against the 1e-5 tolerance), too close for the test to tell a broken import from a right one."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(_normalize(crops)))
    net.eval()
    for m in bns:
        m.momentum = 0.1
        m.num_batches_tracked.fill_(1234)


def _randomize_text(bert: torch.nn.Module, g: torch.Generator) -> None:
    """Trained-looking biases and LayerNorm parameters (transformers initializes them to 0 and 1, where a
    dropped or swapped one would go unseen)."""
    with torch.no_grad():
        for name, p in bert.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif "layer_norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))


def _official_state(visual, bert) -> dict:
    """EXIFNet.state_dict(): the towers inside OpenAI CLIP's shell (its text parts unused), plus sink_temp."""
    g = torch.Generator().manual_seed(3)
    sd = {"model.positional_embedding": torch.randn(77, 512, generator=g),
          "model.text_projection": torch.randn(512, 1024, generator=g).half(),  # CLIP's fp16 cast
          "model.logit_scale": torch.tensor(LOGIT_SCALE),
          "model.token_embedding.weight": torch.randn(49408, 512, generator=g),
          "model.ln_final.weight": torch.ones(512), "model.ln_final.bias": torch.zeros(512)}
    sd.update({f"model.visual.{k}": v for k, v in visual.state_dict().items()})
    sd.update({f"model.transformer.{k}": v for k, v in bert.state_dict().items()})
    # transformers releases of the paper's time saved this buffer.
    sd["model.transformer.embeddings.position_ids"] = torch.arange(512)[None]
    sd["sink_temp"] = torch.tensor(math.log(1 / 0.07))
    return sd


def _training_checkpoint(sd: dict) -> dict:
    return {"epoch": 29, "model": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "params": [0, 1]}]},
            "lr_sched": {"T_max": 100, "eta_min": 1e-7, "last_epoch": 29, "base_lrs": [1e-4]}}


# ------------------------------------------------------------------------------- real inputs

def _official_tags() -> tuple:
    from exif_jax.train import load_config
    return tuple(load_config(str(ROOT / "configs" / "official.py")).exif.tags)


def _exif_texts(style: str, photos=PHOTOS[:3]) -> list[str]:
    tags = _official_tags() if style == "official" else exif.DEFAULT_TAGS
    return [exif.render_text(exif.read_tags(str(p)), tag_order=tags, style=style) for p in photos]


def _calibration_crops(n: int = 32, size: int = 124) -> np.ndarray:
    """n crops at random positions over the bundled photos, for measuring BatchNorm statistics."""
    rng = np.random.default_rng(5)
    out = []
    for k in range(n):
        a = np.asarray(Image.open(PHOTOS[k % len(PHOTOS)]).convert("RGB"))
        top, left = rng.integers(0, a.shape[0] - size), rng.integers(0, a.shape[1] - size)
        out.append(a[top:top + size, left:left + size])
    return np.stack(out)


def _crops(n: int = 4) -> np.ndarray:
    """124x124 native-resolution crops (no resampling) from n bundled photos, uint8 [n, 124, 124, 3]."""
    out = []
    for k, p in enumerate(PHOTOS[:n]):
        a = np.asarray(Image.open(p).convert("RGB"))
        top, left = 40 + 17 * k, 60 + 31 * k
        out.append(a[top:top + 124, left:left + 124])
    return np.stack(out)


def _write_vocab(path: Path, texts: list[str], size: int = 30522) -> None:
    """A BERT-shaped vocab.txt: the specials at distilbert-base-uncased's ids, then from the texts some whole
    words, word starts, 3-character continuations and every single character with and without "##" (so
    greedy longest-match has choices to make), then [unusedN] up to `size` rows."""
    words = sorted({w for t in texts for w in pre_tokenize(normalize(t))})
    pieces = set()
    for i, w in enumerate(words):
        if i % 3 == 0:
            pieces.add(w)
        pieces.add(w[:2])
        pieces.update(w)
        pieces.update("##" + c for c in w)
        if len(w) > 4:
            pieces.add("##" + w[2:5])
    specials = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    vocab = [specials.get(i, f"[unused{i - 1}]") for i in range(104)] + sorted(pieces - {""})
    vocab += [f"[unused{i}]" for i in range(103, 103 + size - len(vocab))]
    assert len(vocab) == size
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")


def _reference_tokenizer(vocab_dir: Path):
    # Not DistilBertTokenizer(vocab_file=...): transformers 5.x ignores that file (every word -> [UNK]).
    return transformers.DistilBertTokenizer.from_pretrained(str(vocab_dir))


# ------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(dir, state dict, torch towers, vocab path, imported out dir): the official file, imported by the CLI."""
    d = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    visual = ReferenceResNet50().eval()
    _randomize_bn(visual, torch.Generator().manual_seed(1))
    _measure_bn(visual, _calibration_crops())
    bert = transformers.DistilBertModel(transformers.DistilBertConfig()).eval()  # distilbert-base-uncased size
    _randomize_text(bert, torch.Generator().manual_seed(2))
    sd = _official_state(visual, bert)
    torch.save(_training_checkpoint(sd), d / "wrapper.pth")
    texts = _exif_texts("official") + _exif_texts("metadata_extractor") + TRICKY
    _write_vocab(d / "vocab.txt", texts)
    out = d / "imported"
    rc = cli.main(["import-official", "--weights", str(d / "wrapper.pth"), "--vocab", str(d / "vocab.txt"),
                   "--out", str(out)])
    assert rc == 0
    return dict(dir=d, sd=sd, visual=visual, bert=bert, vocab=d / "vocab.txt", out=out)


# ------------------------------------------------------------------------------- tokenizer

def test_wordpiece_ids_match_distilbert_tokenizer(official):
    ref = _reference_tokenizer(official["dir"])
    texts = _exif_texts("official") + _exif_texts("metadata_extractor") + TRICKY
    for max_len in (256, 24):  # 24 truncates the EXIF texts: [CLS] + 22 pieces + [SEP]
        tok = WordPiece(official["vocab"], max_len=max_len)
        ids, n_trunc = tok.encode_batch(texts)
        want = ref(texts, padding="max_length", max_length=max_len, truncation=True)
        np.testing.assert_array_equal(ids, np.asarray(want["input_ids"]))
        # The mask is "not [PAD]": it differs from transformers' only where a text spells "[PAD]" itself.
        plain = ["[PAD]" not in t for t in texts]
        np.testing.assert_array_equal(tok.attention_mask(ids)[plain], np.asarray(want["attention_mask"])[plain])
        assert n_trunc == sum(len(ref(t)["input_ids"]) > max_len for t in texts)
    # The vocab really exercises the pieces: whole words, ## continuations and [UNK] all occur.
    ids = WordPiece(official["vocab"], max_len=256).encode(texts[0])
    pieces = ref.convert_ids_to_tokens([int(i) for i in ids if i])
    assert any(p.startswith("##") for p in pieces) and any(len(p) > 3 and p[0].isalpha() for p in pieces)
    assert 100 in WordPiece(official["vocab"]).encode("a" * 101)  # over 100 characters: [UNK]


def test_wordpiece_pickles_and_validates(official, tmp_path):
    tok = WordPiece(official["vocab"], max_len=64)
    back = pickle.loads(pickle.dumps(tok))
    text = _exif_texts("official")[0]
    np.testing.assert_array_equal(back.encode(text), tok.encode(text))
    assert (tok.pad_id, tok.vocab_size, tok.eos_id) == (0, 30522, 102)
    (tmp_path / "v.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"v\.txt.*\[PAD\]"):
        WordPiece(tmp_path / "v.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        WordPiece(tmp_path / "nope.txt")


def test_official_style_rules():
    v = exif.official_value
    assert v("X Resolution", "72 dots per inch") == "72 dots per inch"
    assert v("Y Resolution", "300/1 dots per inch") == "300 dots per inch"
    assert v("Exposure Bias Value", "-1/3 EV") == "-1 EV"          # Python floor division, as the paper's code
    assert v("Exposure Bias Value", "0.3 EV") == "0.3 EV"
    assert v("Exposure Bias Value", "1/0 EV") == "1 EV"            # not two usable integers: numerator kept
    assert v("Focal Length", "5.4 mm") == "5.4 mm" and v("Focal Length", "50 mm") == "50.0 mm"
    assert v("Focal Length", "n/a mm") == "Unknown" and v("Focal Length", "") == "Unknown"
    assert v("ISO Speed Ratings", "100 200") == "100"
    assert v("Model", "Canon EOS 20D") == "CanonEOS20D" and v("Exposure Time", "1/250 sec") == "1/250sec"
    assert v("Flash", "Flash did not fire, auto") == "Unknown"     # over 20 characters
    assert v("Flash", "Flash did not fire") == "Flashdidnotfire"
    text = exif.render_text({"Make": "Canon", "Model": "Canon EOS 20D", "Focal Length": "85 mm"},
                            tag_order=("Make", "Model", "Focal Length"), style="official")
    assert text == "Make: Canon, Model: CanonEOS20D, Focal Length: 85.0 mm"


# ------------------------------------------------------------------------------- the imported model

def _normalize(crops: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float NCHW as data.py feeds the tower: ToTensor, then Normalize(CLIP mean, std)."""
    return ((crops.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(0, 3, 1, 2).copy()


def _torch_image(visual, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return visual(torch.from_numpy(_normalize(crops))).numpy()


def _min_pairwise(x: np.ndarray) -> float:
    """The smallest max |difference| between two rows: how far apart the closest two inputs land."""
    d = np.abs(x[:, None] - x[None]).max(-1)
    return float(d[np.triu_indices(len(x), 1)].min())


def _torch_text(bert, ids: np.ndarray) -> np.ndarray:
    """EXIFNet.encode_text with avg_word_embs=True: DistilBERT's last hidden state averaged over the mask."""
    ids_t = torch.from_numpy(ids.astype(np.int64))
    mask = (ids_t != 0).long()
    with torch.no_grad():
        h = bert(input_ids=ids_t, attention_mask=mask)[0]
        return (torch.sum(h * mask.unsqueeze(-1), 1) / torch.clamp(mask.sum(1, keepdim=True), min=1e-9)).numpy()


def test_imported_towers_match_pytorch(official):
    from flax import nnx

    from exif_jax import workdir

    model, config, _ = workdir.load_model(str(official["out"]))
    assert config.model.text.kind == "distilbert" and config.exif.style == "official"
    assert config.data.crop_size == 124 and np.allclose(config.model.image.mean, CLIP_MEAN, rtol=0, atol=1e-7)
    assert math.isclose(float(model.logit_scale()), math.exp(LOGIT_SCALE), rel_tol=1e-6)
    assert model.t is None  # fixed, as the paper's trainer used it

    crops = _crops(4)
    img = np.asarray(nnx.jit(lambda m, x: m.image(x))(model, crops))
    want = _torch_image(official["visual"], crops)
    unit = want / np.linalg.norm(want, axis=1, keepdims=True)
    # Not a degenerate comparison: the crops land far apart next to the tolerances, so an import that
    # gets any tensor wrong (layout, name, BN statistics) misses by far more than the tolerance.
    assert _min_pairwise(want) > 1000 * 1e-4 and _min_pairwise(unit) > 1000 * 1e-5
    np.testing.assert_allclose(img, want, atol=1e-4, rtol=0)
    emb = np.asarray(nnx.jit(lambda m, x: m.embed_image(x))(model, crops))
    np.testing.assert_allclose(emb, unit, atol=1e-5, rtol=0)

    texts = _exif_texts("official")
    tok = WordPiece(official["out"] / "vocab.txt", max_len=config.tokenizer.max_len)
    length = max(tok.length(t) for t in texts) + 3  # a few [PAD] at the end of the longest text too
    ids = WordPiece(official["out"] / "vocab.txt", max_len=length).encode_batch(texts)[0]
    np.testing.assert_array_equal(ids, np.asarray(_reference_tokenizer(official["dir"])(
        texts, padding="max_length", max_length=length, truncation=True)["input_ids"]))
    txt = np.asarray(nnx.jit(lambda m, x: m.text(x))(model, ids))
    want = _torch_text(official["bert"], ids)
    assert np.std(want) > 0.1 and _min_pairwise(want) > 100 * 1e-4  # measured: 0.108
    np.testing.assert_allclose(txt, want, atol=1e-4, rtol=0)
    # Padding length does not change a text's embedding (masked keys, masked mean).
    longer = WordPiece(official["out"] / "vocab.txt", max_len=length + 16).encode_batch(texts[:1])[0]
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m.text(x))(model, longer)), txt[:1], atol=1e-4)


def test_import_writes_trainer_layout(official):
    out = official["out"]
    assert sorted(p.name for p in out.iterdir()) == ["ckpt", "config.json", "import.json", "vocab.txt"]
    assert sorted(p.name for p in (out / "ckpt").iterdir() if not p.name.startswith(".")) == ["0"]
    meta = json.loads((out / "import.json").read_text())
    assert meta["epoch"] == 29 and meta["vocab_size"] == 30522 and meta["values"] > 91_000_000
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tokenizer"]["model"] == str(out / "vocab.txt") and cfg["model"]["text"]["vocab_size"] == 30522
    assert not list(out.parent.glob(".imported.import-tmp-*"))


def test_localize_runs_on_imported_checkpoint(official, tmp_path):
    photo = tmp_path / "small.png"
    Image.open(PHOTOS[5]).convert("RGB").crop((100, 80, 250, 210)).save(photo)  # 150 x 130 px, lossless
    rc = cli.main(["localize", str(photo), "--checkpoint", str(official["out"]), "-o", str(tmp_path / "loc")])
    assert rc == 0
    line = json.loads((tmp_path / "loc" / "scores.jsonl").read_text().splitlines()[-1])
    assert line["patch"] == 124 and line["patches"] >= 2 and np.isfinite(line["score"])
    heat = np.load(tmp_path / "loc" / "small.npy")
    assert heat.shape == (130, 150) and np.isfinite(heat).all()


def test_export_puts_the_paper_weights_back_into_stock_torch_classes(official, tmp_path):
    """Imported, then `exif-jax export --format all`: transformers' ResNetForImageClassification + DistilBertModel
    reproduce the JAX towers (and the original torch image tower), and the timm file is the paper's own
    torchvision-named tensors, bit for bit."""
    from safetensors.numpy import load_file

    from exif_jax import workdir
    from exif_jax.export import parity

    out = tmp_path / "export"
    assert cli.main(["export", "--checkpoint", str(official["out"]), "-o", str(out), "--format", "all"]) == 0
    man = json.loads((out / "dual_encoder.json").read_text())
    assert (man["image"]["class"], man["text"]["class"], man["text"]["pool"]) == (
        "ResNetForImageClassification", "DistilBertModel", "mean")
    assert math.isclose(math.exp(man["logit_scale"]), math.exp(LOGIT_SCALE), rel_tol=1e-6)

    got = load_file(str(out / "resnet_timm.safetensors"))
    want = {k.removeprefix("model.visual."): v.numpy() for k, v in official["sd"].items()
            if k.startswith("model.visual.")}
    assert set(got) == set(want)
    for k, v in want.items():
        if not k.endswith("num_batches_tracked"):  # a counter torch keeps; the export writes 0
            np.testing.assert_array_equal(got[k], v, err_msg=k)

    model, config, _ = workdir.load_model(str(official["out"]))
    crops, texts = _crops(4), _exif_texts("official")
    r = parity.hf_parity(model, config, str(out), crops, texts)
    assert not any(r["loading_info"].values()), r["loading_info"]
    assert r["ids_identical"] and r["attention_mask"] and r["pixels_max_abs"] <= 1e-6
    # Unit embeddings agree to 1e-4; logits are those cosines times exp(logit_scale) ~ 99.
    assert r["image_max_abs"] <= 1e-4 and r["text_max_abs"] <= 1e-4, r
    assert r["logits_max_abs"] <= 1e-4 * math.exp(LOGIT_SCALE), r
    # Random towers embed different inputs close together: the agreement must still be far finer than that.
    assert r["image_spread"] > 100 * r["image_max_abs"] and r["text_spread"] > 100 * r["text_max_abs"], r
    image = transformers.ResNetForImageClassification.from_pretrained(str(out / "image")).eval()
    pixels = transformers.AutoImageProcessor.from_pretrained(str(out / "image"))(
        list(crops), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        np.testing.assert_allclose(image(pixel_values=pixels).logits.numpy(), _torch_image(official["visual"], crops),
                                   atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------- bad files

def _import_fails(official, tmp_path, obj, *patterns, save=torch.save) -> str:
    bad = tmp_path / "bad.pth"
    save(obj, bad)
    out = tmp_path / "out"
    with pytest.raises(importer.OfficialCheckpointError) as e:
        importer.import_official(bad, official["vocab"], out)
    msg = str(e.value)
    for p in patterns:
        assert p in msg, (p, msg)
    assert not out.exists() and not list(tmp_path.glob(".out.import-tmp-*"))
    return msg



def test_bad_files_are_refused_by_name(official, tmp_path):
    sd = official["sd"]
    # An extra key, a missing key and a wrong shape, reported together; nothing written.
    broken = {k: v for k, v in sd.items() if k != "model.token_embedding.weight"}  # a skipped key: 100 MB less
    broken["model.visual.fc2.weight"] = torch.zeros(3, 3)
    del broken["model.transformer.transformer.layer.3.ffn.lin1.bias"]
    broken["model.visual.layer2.0.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    msg = _import_fails(official, tmp_path, _training_checkpoint(broken), "bad.pth", "model.visual.fc2.weight",
                        "model.transformer.transformer.layer.3.ffn.lin1.bias",
                        "model.visual.layer2.0.conv2.weight: file (128, 128, 1, 1), model (128, 128, 3, 3)")
    assert "1 unexpected" in msg and "1 missing" in msg and "1 shape" in msg


class _NotATensor:
    pass


def test_pickle_only_files_are_refused(official, tmp_path):
    # torch.save of a dict holding an arbitrary object: only a full unpickle could read it.
    _import_fails(official, tmp_path, {"model": {}, "trainer": _NotATensor()}, "bad.pth", "weights_only=True")
    # A plain pickle, not a torch file at all.
    _import_fails(official, tmp_path, {"model": {}}, "bad.pth", "weights-only",
                  save=lambda o, p: p.write_bytes(pickle.dumps(o)))
    # A weights-only file that is not EXIFNet's.
    _import_fails(official, tmp_path, {"state_dict": {"w": torch.zeros(2)}}, "bad.pth", "no EXIFNet state dict")
    # The CLI reports it by name and exits 2, writing nothing.
    rc = cli.main(["import-official", "--weights", str(tmp_path / "bad.pth"), "--vocab", str(official["vocab"]),
                   "--out", str(tmp_path / "out")])
    assert rc == 2 and not (tmp_path / "out").exists()


def test_wrong_vocab_and_existing_out_are_refused(official, tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
    with pytest.raises(importer.OfficialCheckpointError, match=r"vocab\.txt: 6 pieces.*30522"):
        importer.import_official(official["dir"] / "wrapper.pth", tmp_path / "vocab.txt", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    with pytest.raises(FileExistsError, match="imported"):
        importer.import_official(official["dir"] / "wrapper.pth", official["vocab"], official["out"])
    assert os.path.isdir(official["out"] / "ckpt")
