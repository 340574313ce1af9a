"""The paper's released model (hellomuffin/exif-as-language): what `exif-jax import-official` writes as config.json.

ResNet-50 image tower (torchvision layout, fc 2048 -> 768, CLIP's pixel mean/std, 124-px native crops), the
DistilBERT (distilbert-base-uncased) text tower averaged over its tokens, both used as they are (768-d, no
projection) and L2-normalized for the loss; fixed logit scale exp(CLIP's logit_scale) (= 100); EXIF text in
the paper code's "official" style, WordPiece ids from distilbert-base-uncased's vocab.txt.

The importer fills in from the checkpoint and the vocab: model.logit_scale_init (exp of the file's
model.logit_scale), model.text.vocab_size, model.text.pad_id and tokenizer.model (the copied vocab.txt).
Everything not about the model (data, optimizer, loop, mesh) is configs/base.py's; set those to fine-tune.

Run:
  exif-jax import-official --weights wrapper.pth --vocab vocab.txt --out runs/official
  exif-jax localize photo.jpg --checkpoint runs/official -o out/
"""
import ml_collections

from exif_jax import schema

# Tag order of the paper's text: a YFCC100M line lists tags as metadata-extractor read them, IFD0 then the
# Exif SubIFD, each in the order the file stores them, and data.py joins them in that order; with
# style="official", render_text keeps that file order and uses this tuple only as the set of tags to keep.
# Which tags the paper kept (those in >= 49% of its photos, dataProcess/all_exif_count.json) is not
# published; these are exif.DEFAULT_TAGS, listed in their usual file order.
OFFICIAL_TAGS = (
    # IFD0
    "Make", "Model", "X Resolution", "Y Resolution", "Resolution Unit", "YCbCr Positioning",
    # Exif SubIFD
    "Exposure Time", "F-Number", "Exposure Program", "ISO Speed Ratings", "Exif Version",
    "Components Configuration", "Compressed Bits Per Pixel", "Shutter Speed Value", "Aperture Value",
    "Exposure Bias Value", "Max Aperture Value", "Metering Mode", "Flash", "Focal Length", "FlashPix Version",
    "Color Space", "Sensing Method", "Custom Rendered", "Exposure Mode", "White Balance Mode",
    "Digital Zoom Ratio", "Focal Length 35", "Scene Capture Type", "Gain Control", "Contrast", "Saturation",
    "Sharpness",
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # data.py / exif_sc.py: Normalize(mean, std) after ToTensor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def get_config() -> ml_collections.ConfigDict:
    c = schema.base_config()
    c.exif.tags = OFFICIAL_TAGS
    c.exif.style = "official"  # the schema's max_value_len 40 stays: the official rules keep values under 20

    # distilbert-base-uncased's WordPiece (lowercased: the schema's); the trainer padded to 512 and cut there.
    # tokenizer.model (vocab.txt) is set by the importer: a copy beside the checkpoint.
    c.tokenizer.kind = "wordpiece"
    c.tokenizer.max_len = 512

    c.data.crop_size = 124  # splice_evaluator.py --patch_size 124 (train.py's own default says 224)

    m = c.model
    m.embed_dim = 768
    m.image.update(dict(kind="resnet", variant="50", width=64, mean=CLIP_MEAN, std=CLIP_STD))  # fc: 2048 -> 768
    m.text.update(dict(kind="distilbert", width=768, heads=12, mlp_dim=3072, vocab_size=30522,
                       eos_id=102,  # [SEP] in distilbert-base-uncased ([PAD] 0: the schema's pad_id)
                       head="none"))  # 6 layers, masked mean pool, bidirectional: the schema's
    m.learn_logit_scale = False
    m.logit_scale_init = 100.0           # exp(CLIP's trained logit_scale); the importer reads the file's
    m.dtype = "float32"                  # the released towers ran in f32 (CLIP's fp16 cast preceded them)
    return c
