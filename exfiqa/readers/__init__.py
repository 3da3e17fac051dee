"""Readers: benchmark files on disk -> aligned RGB uint8 112x112 faces and the comparison protocol.

No torch; nothing here evaluates or extracts. Modules, lowest first: ``images`` (decoding one image
safely, file discovery), ``align`` (ArcFace template, :func:`align_face`), ``detect`` (YuNet
detection on raw photos, ``exfiqa align``), ``benchmark`` (the :class:`Benchmark` every reader
returns, its errors, image encoding), the formats ``bin`` (insightface, never unpickled),
``folders`` (XQLFW/LFW pairs, Adience) and ``ijbc`` (IJB-C 1:1), each with its writer, and
``registry`` (benchmark kinds, :func:`register_reader`, :func:`load_benchmark`).
"""

from exfiqa.readers.align import ARCFACE_TEMPLATE, align_face
from exfiqa.readers.benchmark import Benchmark, DatasetFormatError, decode_image, encode_image
from exfiqa.readers.bin import BinFormatError, read_bin, write_bin
from exfiqa.readers.detect import FaceDetector, align_tree, detect_faces, read_photo
from exfiqa.readers.folders import read_adience, read_xqlfw, write_identity_folders, write_xqlfw
from exfiqa.readers.ijbc import read_ijbc, write_ijbc
from exfiqa.readers.images import (
    IMAGE_EXTENSIONS,
    IMAGE_SIZE,
    ImageReadError,
    find_images,
    read_face,
    to_rgb8,
)
from exfiqa.readers.registry import (
    BENCHMARK_KINDS,
    READER_MODULES,
    READERS,
    load_benchmark,
    reader_source,
    register_reader,
)

__all__ = [
    "ARCFACE_TEMPLATE", "BENCHMARK_KINDS", "IMAGE_EXTENSIONS", "IMAGE_SIZE", "READERS", "READER_MODULES",
    "Benchmark", "BinFormatError", "DatasetFormatError", "FaceDetector", "ImageReadError", "align_face",
    "align_tree", "decode_image", "detect_faces", "encode_image", "find_images", "load_benchmark",
    "read_adience", "read_bin", "read_face", "read_ijbc", "read_photo", "read_xqlfw", "reader_source",
    "register_reader", "to_rgb8", "write_bin", "write_identity_folders", "write_ijbc", "write_xqlfw",
]
