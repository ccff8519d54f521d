"""Fault injection on decoding (issue 11, class 10): the decoded size is bounded from the header,
before any decoding; the header reader agrees with OpenCV and never raises."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_folder_source import Harness, png, quarantined

from monitor import images
from monitor.images import ImageTooLarge, decode_image, image_header

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, depth: int, colour: int) -> bytes:
    """A small, complete-looking PNG whose IHDR claims `width` x `height` at `depth` bits, `colour` type."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + _png_chunk(b"IEND", b""))


@pytest.fixture
def harness(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """A started-on-demand folder source named after the test, stopped at the end."""
    h = Harness(tmp_path, request.node.name[:60].replace("[", "_").replace("]", "_"))
    yield h
    h.stop()


# --- the bound --------------------------------------------------------------------------------

def test_a_small_png_claiming_a_huge_16_bit_rgba_image_is_quarantined_as_too_large_undecoded(
        harness, monkeypatch):
    # 8000 x 8000 is under the pixel limit (2^26); at 16-bit RGBA it decodes to 512 MB.
    bomb = png_claiming(8000, 8000, 16, 6)
    assert len(bomb) < 100_000 and 8000 * 8000 < 2**26
    decoded: list[int] = []
    real_imdecode = cv2.imdecode

    def spy(buf, flags):
        decoded.append(len(buf))
        return real_imdecode(buf, flags)

    monkeypatch.setattr(images.cv2, "imdecode", spy)
    harness.start()
    (harness.inbox / "bomb16.png").write_bytes(bomb)
    _, text = quarantined(harness, "bomb16.png")
    assert "reason: too_large" in text
    assert "512000000 bytes" in text  # the detail names the decoded size
    assert decoded == []  # refused from the header: OpenCV never saw it


def test_a_real_16_bit_rgba_png_above_the_bound_raises_before_decoding():
    image = np.random.default_rng(0).integers(0, 65535, (48, 64, 4), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    data = buf.tobytes()
    with pytest.raises(ImageTooLarge, match=r"64x48x4x2 = 24576 bytes"):
        decode_image(data, max_decoded_bytes=image.nbytes - 1)
    np.testing.assert_array_equal(decode_image(data, max_decoded_bytes=image.nbytes), image)


def test_an_image_within_the_bound_is_still_scored(harness):
    harness.start()
    (harness.inbox / "fine.png").write_bytes(png(1))
    assert [f.path.name for f in harness.frames(1)] == ["fine.png"]
    time.sleep(0.1)
    assert not (harness.quarantine_dir / harness.config.name).exists()


# --- the config key --------------------------------------------------------------------------

def test_max_decoded_bytes_in_the_config_lowers_the_bound_for_that_folder(tmp_path):
    # 32x32 gray decodes to 1024 bytes, 64x48 gray to 3072: a bound of 2048 takes the one, refuses the other.
    harness = Harness(tmp_path, "lowered", max_decoded_bytes=2048)
    try:
        harness.start()
        (harness.inbox / "small.png").write_bytes(png(1, size=32))
        (harness.inbox / "large.png").write_bytes(
            cv2.imencode(".png", np.full((48, 64), 128, np.uint8))[1].tobytes())
        _, text = quarantined(harness, "large.png")
        assert "reason: too_large" in text
        assert "64x48x1x1 = 3072 bytes > max_decoded_bytes 2048" in text
        assert [f.path.name for f in harness.frames(1)] == ["small.png"]
    finally:
        harness.stop()


def test_max_decoded_bytes_defaults_to_the_decoder_s_bound():
    from monitor.config import FolderSourceConfig

    assert FolderSourceConfig(name="a", folder=Path("in")).max_decoded_bytes == images.MAX_DECODED_BYTES == 2**28


@pytest.mark.parametrize(("value", "message"), [
    (0, "Input should be greater than 0"), (-1, "Input should be greater than 0"),
    ("lots", "Input should be a valid integer, unable to parse string as an integer"),
    (1.5, "Input should be a valid integer, got a number with a fractional part"),
])
def test_a_bad_max_decoded_bytes_is_a_config_error_naming_the_file_and_the_key(tmp_path, value, message):
    from monitor.config import ConfigError, load_config

    path = tmp_path / "conf.yaml"
    path.write_text(f"sources: [{{name: a, folder: in, max_decoded_bytes: {value}}}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: sources[0].max_decoded_bytes: {message}"


# --- the header reader ------------------------------------------------------------------------

@_SETTINGS
@given(width=st.integers(1, 80), height=st.integers(1, 80), channels=st.sampled_from([1, 3, 4]),
       dtype=st.sampled_from([np.uint8, np.uint16]), ext=st.sampled_from([".png", ".jpg", ".bmp", ".tiff"]),
       seed=st.integers(0, 2**32 - 1))
def test_the_header_of_an_encoded_image_matches_the_decoded_array(width, height, channels, dtype, ext, seed):
    shape = (height, width) if channels == 1 else (height, width, channels)
    image = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    data = buf.tobytes()
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    expected = (decoded.shape[1], decoded.shape[0], 1 if decoded.ndim == 2 else decoded.shape[2],
                decoded.dtype.itemsize)
    assert image_header(data) == expected


_SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", b"\xff\xd8", b"\xff\xd8\xff",
               b"BM", b"II*\x00", b"MM\x00*", b"RIFF", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"RIFF\x00\x00\x00\x00WEBPVP8X",
               b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"P5", b"P6\n", b"P4 "]


@_SETTINGS
@given(prefix=st.sampled_from(_SIGNATURES), rest=st.binary(max_size=300))
def test_the_header_reader_never_raises_on_any_bytes(prefix, rest):
    header = image_header(prefix + rest)
    assert header is None or (len(header) == 4 and all(isinstance(v, int) and v >= 0 for v in header))


@_SETTINGS
@given(ext=st.sampled_from([".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm"]), cut=st.integers(0, 400))
def test_the_header_reader_never_raises_on_a_truncated_image(ext, cut):
    ok, buf = cv2.imencode(ext, np.full((20, 30, 3), 77, np.uint8))
    assert ok
    image_header(buf.tobytes()[:cut])


# --- pixel types ------------------------------------------------------------------------------

def _tiff(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".tif", image)
    assert ok
    return buf.tobytes()


def test_a_tiff_of_int32_pixels_is_quarantined_at_the_door_and_the_next_image_scored(harness):
    int32 = (np.arange(32 * 32, dtype=np.int32) * 1000).reshape(32, 32)
    assert decode_image(_tiff(int32)).dtype == np.int32  # OpenCV decodes it: only its range is unknown
    harness.start()
    (harness.inbox / "counts.tif").write_bytes(_tiff(int32))
    _, text = quarantined(harness, "counts.tif")
    assert "reason: undecodable" in text and "pixels of type int32 are not scored" in text
    (harness.inbox / "next.png").write_bytes(png(2))
    assert [f.path.name for f in harness.frames(1)] == ["next.png"]


def test_tiffs_of_16_bit_and_float_pixels_are_scored(harness):
    harness.start()
    (harness.inbox / "u16.tif").write_bytes(_tiff(np.full((32, 32), 40000, np.uint16)))
    (harness.inbox / "f32.tif").write_bytes(_tiff(np.full((32, 32), 0.5, np.float32)))
    frames = harness.frames(2)
    assert sorted((f.path.name, f.image.dtype.name) for f in frames) == [("f32.tif", "float32"),
                                                                       ("u16.tif", "uint16")]


@pytest.mark.parametrize(("name", "pixels", "reason"), [
    ("height_map.tif", np.where(np.eye(32, dtype=bool), np.nan, 0.5).astype(np.float32),
     "32 of 1024 float pixel values are NaN or infinite"),
    ("saturated.tif", np.full((32, 32), np.inf, np.float32), "1024 of 1024 float pixel values are NaN or infinite"),
    ("levels.tif", np.full((32, 32), 128.0, np.float32),
     "float pixels are read on a scale of 0..1, these span 128..128"),
])
def test_a_float_tiff_that_would_score_nan_or_clip_is_quarantined_with_the_reason(harness, name, pixels, reason):
    harness.start()
    (harness.inbox / name).write_bytes(_tiff(pixels))
    _, text = quarantined(harness, name)
    assert "reason: undecodable" in text and reason in text
    (harness.inbox / "next.png").write_bytes(png(2))
    assert [f.path.name for f in harness.frames(1)] == ["next.png"]


def test_a_float_tiff_within_a_grey_level_of_0_to_1_is_scored(harness):
    harness.start()
    pixels = np.linspace(-0.002, 1.002, 32 * 32, dtype=np.float32).reshape(32, 32)  # rounding overshoot
    (harness.inbox / "overshoot.tif").write_bytes(_tiff(pixels))
    assert [f.path.name for f in harness.frames(1)] == ["overshoot.tif"]


@pytest.mark.parametrize(("ext", "image"), [
    (".webp", np.full((40, 30, 3), 90, np.uint8)),  # lossless (VP8L)
    (".pgm", np.full((40, 30), 90, np.uint8)),
    (".pgm", np.full((40, 30), 9000, np.uint16)),
    (".ppm", np.full((40, 30, 3), 90, np.uint8)),
])
def test_the_header_of_webp_and_pnm_images_gives_the_decoded_size_and_their_end(ext, image):
    ok, buf = cv2.imencode(ext, image)
    data = buf.tobytes()
    decoded = decode_image(data)
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    assert image_header(data) == (30, 40, channels, decoded.dtype.itemsize)
    assert images.image_is_complete(data) and not images.image_is_complete(data[:-1])


def test_a_lossy_webp_header_is_read_too():
    ok, buf = cv2.imencode(".webp", np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8),
                           [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert buf.tobytes()[12:16] == b"VP8 " and image_header(buf.tobytes()) == (70, 50, 3, 1)


def test_a_pgm_claiming_a_huge_image_is_refused_before_decoding():
    header = b"P5\n# from a line camera\n100000 100000\n65535\n"
    with pytest.raises(ImageTooLarge):
        decode_image(header + bytes(64))
