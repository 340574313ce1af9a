"""The build-data records as a TFDS dataset (`exif_photos`), array_record file format, no tensorflow needed.

Photos come from the manual dir (any folder tree; every file is tried, bad ones are skipped exactly as
`exif-jax build-data` skips them). This is the whole-photo layout (original bytes in each example); the
random-access crop layout (small records + pixel files) is build-data's. Fields match
exif_jax.data.records.Record; `tags` is a JSON object string because TFDS has no feature for a dict with
open-ended keys. The image is the original file's bytes in a scalar string Tensor: `tfds.features.Image`
would re-encode, and needs tensorflow.

    import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils
    from exif_jax.data.tfds_builder import ExifPhotos
    b = ExifPhotos(data_dir="/tmp/tfds", file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir="/photos"))
    ds = b.as_data_source()["train"]     # or tfds.data_source("exif_photos", data_dir="/tmp/tfds")

Text fields come back as bytes (decoding them to str is a tensorflow step). The `tfds build` command
itself does not run here: tfds 4.9.10's CLI imports tensorflow at start-up (tf.train.Example).
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from exif_jax.data import build

_TEXT_FIELDS = ("text", "width", "height", "camera", "path", "sha256")


class ExifPhotosConfig(tfds.core.BuilderConfig):
    """How the EXIF text is made (the tag set and order are part of the model)."""

    def __init__(self, *, tag_order: tuple[str, ...] | None = None, max_value_len: int = 40,
                 style: str = "metadata_extractor", min_size: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.tag_order, self.max_value_len, self.style, self.min_size = tag_order, max_value_len, style, min_size

    def settings(self) -> build.Settings:
        """The build-data settings this config stands for."""
        from exif_jax import exif
        # The original bytes are the TFDS example's image: no restart rewrite (that layout is build-data's).
        return build.Settings(tag_order=tuple(self.tag_order or exif.DEFAULT_TAGS),
                              max_value_len=self.max_value_len, style=self.style, min_size=self.min_size,
                              fast_path=False)


class ExifPhotos(tfds.core.GeneratorBasedBuilder):
    """Camera photos as original bytes + rendered EXIF text."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Record version 1: original bytes, EXIF text, tags JSON, size, camera."}
    BUILDER_CONFIGS = [ExifPhotosConfig(name="default", description="exif.DEFAULT_TAGS, values cut at 40 chars")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the photos (JPEGs with EXIF Make and Model) in the manual dir."

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9.10 resolves a packaged builder's file through the `importlib_resources` backport,
        # which it only declares as a dependency for Python < 3.9; this file is the answer it looks for.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built from a module, not an installed TFDS package: DatasetInfo must get the builder itself.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # original file bytes
                "text": tfds.features.Text(),
                "tags": tfds.features.Text(),  # JSON object: tag name -> description
                "width": tfds.features.Scalar(dtype=np.int32),
                "height": tfds.features.Scalar(dtype=np.int32),
                "camera": tfds.features.Text(),
                "path": tfds.features.Text(),
                "sha256": tfds.features.Text(),
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(str(dl_manager.manual_dir))}

    def _generate_examples(self, folder: str):
        settings = self.builder_config.settings()
        # `path` is relative to the manual dir, so the prepared data does not depend on where it lay.
        items = [build.Item(src=p, name=os.path.relpath(p, folder)) for p in build.list_images(folder)]
        unique, _ = build.plan_inputs(items, workers=2, progress=False)
        for it in unique:  # sha256 order; unreadable files and duplicates were dropped while planning
            with open(it.src, "rb") as f:
                data = f.read()
            rec, _reason, _ = build.make_record(data, it.name, settings, sha256=it.sha256)
            if rec is not None:
                yield it.sha256, {"image": data, **{k: rec[k] for k in _TEXT_FIELDS},
                                  "tags": json.dumps(rec["tags"], sort_keys=True)}
