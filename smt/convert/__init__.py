"""`python -m smt.convert SRC --out DIR`: a published reference SMT checkpoint -> our model.

SRC is a hub model id (downloaded through `huggingface_hub`) or a local folder in the
reference's format. Every parameter is mapped (`smt.convert.keys`) or the conversion stops
naming the first key that is not; DIR then holds what `smt.predict --checkpoint DIR/model.ckpt`
and `smt.train --init-from DIR` read.
"""
from smt.convert.build import CHECKPOINT_NAME, REFERENCE_NAME, Conversion, convert, read_image_convention
from smt.convert.conventions import DATASETS, ImageConvention

__all__ = ["CHECKPOINT_NAME", "DATASETS", "REFERENCE_NAME", "Conversion", "ImageConvention", "convert",
           "read_image_convention"]
