"""Image decoding shared by `read_face` and `datasets.decode_image`: bit depth, modes, size limit."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from exfiqa.readers import DatasetFormatError, decode_image, images
from exfiqa.readers.images import ImageReadError, read_face, to_rgb8

# -- hand-made files -------------------------------------------------------------------------------


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand: (H, W) uint16 -> gray (colour type 0), (H, W, 3) -> RGB (2)."""
    h, w = arr.shape[:2]
    color_type = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def tiff16_rgb(arr: np.ndarray) -> bytes:
    """An uncompressed little-endian 16-bit-per-sample RGB TIFF written by hand."""
    h, w, _ = arr.shape
    data = arr.astype("<u2").tobytes()
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, "bps"), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, "data"), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    bps_off = 8 + 2 + 12 * len(tags) + 4
    where = {"bps": bps_off, "data": bps_off + 6}
    out = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        value = where.get(value, value) if isinstance(value, str) else value
        out += struct.pack("<HHIHH", tag, typ, count, value, 0) if typ == 3 and count == 1 else struct.pack("<HHII", tag, typ, count, value)
    return out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data


def png_bomb(w: int, h: int) -> bytes:
    """A w x h 1-bit all-black PNG, compressed row by row (never w*h bytes in memory)."""
    z = zlib.compressobj(9)
    row = b"\0" * (1 + (w + 7) // 8)
    body = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _gray16(seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed).integers(0, 65536, (112, 112), dtype=np.uint16)
    g[0, :8] = [0, 1, 255, 256, 257, 32767, 65279, 65535]  # edges of the v >> 8 rule
    g.reshape(-1)[112 : 112 + 256] = np.arange(256) * 257  # 8-bit data stored as 16 bits
    return g


def _both_readers(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return read_face(path), decode_image(path), decode_image(path.read_bytes(), source="x.bin#0")


# -- 16-bit ----------------------------------------------------------------------------------------


def _save_i16(path: Path, g: np.ndarray) -> None:
    Image.fromarray(g).save(path)  # Pillow writes mode I;16


def _save_i16b_tiff(path: Path, g: np.ndarray) -> None:
    Image.frombytes("I;16B", (g.shape[1], g.shape[0]), g.astype(">u2").tobytes()).save(path)


def _save_pgm16(path: Path, g: np.ndarray) -> None:
    path.write_bytes(f"P5 {g.shape[1]} {g.shape[0]} 65535\n".encode() + g.astype(">u2").tobytes())


def _save_png16_by_hand(path: Path, g: np.ndarray) -> None:
    path.write_bytes(png16(g))


@pytest.mark.parametrize(
    ("name", "save", "mode"),
    [
        ("pillow.png", _save_i16, "I;16"),
        ("hand.png", _save_png16_by_hand, "I;16"),
        ("big_endian.tif", _save_i16b_tiff, "I;16B"),
        ("netpbm.pgm", _save_pgm16, "I"),
    ],
)
def test_16bit_gray_is_its_high_byte_in_both_readers(tmp_path, name, save, mode):
    g = _gray16()
    path = tmp_path / name
    save(path, g)
    with Image.open(path) as im:
        assert im.mode == mode  # the mode this case is about
    want = np.repeat((g >> 8).astype(np.uint8)[:, :, None], 3, axis=2)  # by hand: v >> 8
    assert want[0, :8, 0].tolist() == [0, 0, 0, 1, 1, 127, 254, 255]
    assert want[..., 0].reshape(-1)[112 : 112 + 256].tolist() == list(range(256))  # unchanged
    for got in _both_readers(path):
        assert got.dtype == np.uint8 and got.shape == (112, 112, 3)
        np.testing.assert_array_equal(got, want)
    # not Pillow's clipping conversion, which turns almost everything white
    with Image.open(path) as im:
        clipped = np.asarray(im.convert("RGB"))
    assert (clipped == 255).mean() > 0.9 and (want == 255).mean() < 0.01


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16bit_rgb_is_its_high_byte_in_both_readers(tmp_path, fmt):
    rgb = np.random.default_rng(1).integers(0, 65536, (112, 112, 3), dtype=np.uint16)
    rgb[0, :3] = [[0, 255, 256], [257, 65279, 65535], [128 * 257, 7 * 257, 255 * 257]]
    path = tmp_path / f"rgb16.{fmt}"
    path.write_bytes(png16(rgb) if fmt == "png" else tiff16_rgb(rgb))
    want = (rgb >> 8).astype(np.uint8)
    assert want[0, :3].tolist() == [[0, 0, 1], [1, 254, 255], [128, 7, 255]]
    for got in _both_readers(path):
        np.testing.assert_array_equal(got, want)


def test_16bit_gray_and_rgb_agree(tmp_path):
    """The same 16-bit gray values as a gray file and as an RGB file give the same pixels."""
    g = _gray16(2)
    (tmp_path / "g.png").write_bytes(png16(g))
    (tmp_path / "c.png").write_bytes(png16(np.repeat(g[:, :, None], 3, axis=2)))
    np.testing.assert_array_equal(read_face(tmp_path / "g.png"), read_face(tmp_path / "c.png"))
    np.testing.assert_array_equal(decode_image(tmp_path / "g.png"), decode_image(tmp_path / "c.png"))


def test_float_and_out_of_range_integer_images_are_errors_naming_the_file(tmp_path):
    Image.fromarray(np.full((112, 112), 0.5, np.float32)).save(tmp_path / "float.tif")
    Image.fromarray(np.full((112, 112), 70000, np.int32)).save(tmp_path / "int32.tif")
    for name, what in [("float.tif", "mode F"), ("int32.tif", "0..65535")]:
        path = tmp_path / name
        with pytest.raises(ImageReadError, match=f"{name}.*{what}"):
            read_face(path)
        with pytest.raises(DatasetFormatError, match=f"{name}.*{what}"):
            decode_image(path)
        with pytest.raises(DatasetFormatError, match=f"faces.bin#7.*{what}"):
            decode_image(path.read_bytes(), source="faces.bin#7")


# -- 8-bit modes: unchanged ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK"])
def test_8bit_modes_convert_as_pillow_does(tmp_path, mode):
    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 256, (112, 112, 4), dtype=np.uint8), "RGBA")
    im = im.convert(mode) if "A" in mode else im.convert("RGB").convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode
        want = np.asarray(reopened.convert("RGB"))
        np.testing.assert_array_equal(to_rgb8(reopened), want)
    for got in _both_readers(path):
        np.testing.assert_array_equal(got, want)


# -- size limit / decompression bombs --------------------------------------------------------------

BOMBS = [
    pytest.param(20000, 20000, id="20000x20000-pillow-refuses"),
    pytest.param(10000, 10000, id="10000x10000-pillow-only-warns"),
    pytest.param(8193, 8192, id="8193x8192-just-over-our-limit"),
]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("w", "h"), BOMBS)
def test_oversized_images_are_refused_before_decoding(tmp_path, monkeypatch, w, h):
    data = png_bomb(w, h)
    assert len(data) < 60_000  # a 20000x20000 one is about 48 kB
    path = tmp_path / "bomb.png"
    path.write_bytes(data)

    def no_decoding(self, *a, **k):
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(ImageReadError, match=r"bomb\.png.*(decompression bomb|pixels)"):
        read_face(path)
    with pytest.raises(DatasetFormatError, match=r"bomb\.png.*(decompression bomb|pixels)"):
        decode_image(path)
    with pytest.raises(DatasetFormatError, match=r"lfw\.bin#3.*(decompression bomb|pixels)"):
        decode_image(data, source="lfw.bin#3")


def test_refusing_a_bomb_costs_no_memory(tmp_path):
    """Peak RSS of a fresh process grows by < 40 MB while refusing 400 M and 100 M pixel PNGs."""
    for w in (20000, 10000):
        (tmp_path / f"{w}.png").write_bytes(png_bomb(w, w))
    script = textwrap.dedent(f"""
        import resource, warnings
        from pathlib import Path
        from exfiqa.readers import DatasetFormatError, decode_image
        from exfiqa.readers.images import ImageReadError, read_face
        warnings.simplefilter("ignore")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for p in sorted(Path({str(tmp_path)!r}).glob("*.png")):
            for call, err in ((read_face, ImageReadError), (decode_image, DatasetFormatError)):
                try:
                    call(p)
                except err:
                    pass
                else:
                    raise SystemExit(f"{{p}} was decoded")
            try:
                decode_image(p.read_bytes())
            except DatasetFormatError:
                pass
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    grown_kib = int(run.stdout.split()[-1])
    assert grown_kib < 40_000, f"peak RSS grew by {grown_kib} KiB"


def test_limit_is_inclusive_and_read_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 64 * 64)
    Image.new("L", (64, 64), 9).save(tmp_path / "ok.png")
    Image.new("L", (65, 64), 9).save(tmp_path / "big.png")
    assert (decode_image(tmp_path / "ok.png") == 9).all()
    with pytest.raises(DatasetFormatError, match="big.png.*4,160 pixels exceeds the 4,096-pixel limit"):
        decode_image(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="big.png"):
        read_face(tmp_path / "big.png")


def test_the_readers_do_not_import_torch():
    """Decoding and every reader run without torch."""
    run = subprocess.run(
        [sys.executable, "-c", "import sys, exfiqa.readers.images; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')))"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_unreadable_bytes_still_name_the_source():
    with pytest.raises(DatasetFormatError, match="cfp.bin#2"):
        decode_image(b"not an image", source="cfp.bin#2")
    with pytest.raises(ImageReadError, match="nope.png"):
        read_face(Path("nope.png"))


# -- bounded work per benchmark image ------------------------------------------------------------


def test_bin_images_of_another_size_are_refused_before_decoding(tmp_path, monkeypatch):
    import pickle

    from exfiqa.readers import read_bin

    big = png_bomb(8192, 8192)  # exactly MAX_IMAGE_PIXELS: decoding it would take 0.8 GB
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([big, big], [True]), protocol=2))
    bench = read_bin(path)

    def no_decoding(self, *a, **k):
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(DatasetFormatError, match=r"lfw\.bin#1: .*8192x8192 image, expected 112x112; not decoded"):
        bench.image(1)
    (tmp_path / "x.png").write_bytes(png_bomb(8, 4))
    with pytest.raises(DatasetFormatError, match=r"x\.png: .*8x4 image, expected 112x112"):
        decode_image(tmp_path / "x.png", size=(112, 112))


def _progressive_jpeg(repeat_last_scan: int) -> bytes:
    rng = np.random.default_rng(0)
    arr = np.asarray(Image.fromarray(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)).resize((112, 112)))
    buf = __import__("io").BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")  # the last scan runs from its SOS marker to the EOI marker
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + data[last:-2] * repeat_last_scan + b"\xff\xd9"


def test_jpeg_scan_count_is_bounded_before_decoding(tmp_path, monkeypatch):
    good = _progressive_jpeg(0)
    scans = good.count(b"\xff\xda")
    assert 2 < scans <= images.MAX_JPEG_SCANS  # a real progressive file: about 10 scans
    np.testing.assert_array_equal(decode_image(good), np.asarray(Image.open(__import__("io").BytesIO(good)).convert("RGB")))
    bad = _progressive_jpeg(2000)
    (tmp_path / "slow.jpg").write_bytes(bad)

    def no_decoding(self, *a, **k):
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    want = rf"JPEG with {scans + 2000} scans, more than the 100"
    with pytest.raises(ImageReadError, match=rf"slow\.jpg: {want}"):
        read_face(tmp_path / "slow.jpg")
    with pytest.raises(DatasetFormatError, match=rf"slow\.jpg: cannot decode image \({want}"):
        decode_image(tmp_path / "slow.jpg")
    with pytest.raises(DatasetFormatError, match=rf"lfw\.bin#0: cannot decode image \({want}"):
        decode_image(bad, source="lfw.bin#0", size=(112, 112))
