"""Image files: which extensions count, listing a folder, whether bytes hold a whole image, decoding.

Every reader of image files (the folder source, `monitor score`, training, evaluation) goes through here,
so a file the daemon would score is the same file training would read.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                                     ".pnm")
# Formats whose bytes say where the image ends (see image_is_complete). A PGM/PPM says it by its size when it is
# binary (P4-P6, what cameras and tools write); an ASCII one is left to the decoder, as a TIFF is.
SELF_DELIMITED = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".pgm", ".ppm", ".pnm"})
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The pixel limit (CV_IO_MAX_IMAGE_PIXELS) does not bound memory: a 0.5 MB PNG of a 16-bit RGBA image just
# under 2^26 pixels decodes to 512 MiB, and the copies made for scoring take the process to gigabytes.
# This bounds the decoded array itself; 256 MiB still admits 8-bit gray at the pixel limit (64 MiB),
# 8-bit colour up to ~89 Mpixel and 16-bit colour up to ~44 Mpixel.
MAX_DECODED_BYTES = 256 * 2**20

# PNG colour type -> channels of OpenCV's IMREAD_UNCHANGED result. Gray+alpha comes back as BGRA, and a
# palette as BGR, or BGRA when it has transparency: 4 is the bound.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic coded).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# JPEG markers without a length field: TEM, RSTn, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})


class ImageTooLarge(ValueError):
    """The header says the decoded image would exceed the bound on decoded bytes; nothing was decoded."""

    def __init__(self, header: tuple[int, int, int, int], limit: int) -> None:
        width, height, channels, depth = header
        self.decoded_bytes = width * height * channels * depth
        self.limit = limit
        super().__init__(f"decoded size {width}x{height}x{channels}x{depth} = {self.decoded_bytes} bytes "
                         f"> max_decoded_bytes {limit}")


def is_image_name(path: Path, extensions: tuple[str, ...] | frozenset[str] = IMAGE_EXTENSIONS) -> bool:
    """True when the file name has one of `extensions` (lower-case, with the dot)."""
    return path.suffix.lower() in extensions


def is_self_delimited(path: Path) -> bool:
    """True for formats whose bytes carry their own end (PNG, JPEG, BMP)."""
    return path.suffix.lower() in SELF_DELIMITED


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive, sorted), by extension; hidden files and folders left out.

    A name starting with "." is a writer's temporary (the folder source skips them too), a macOS copy's
    AppleDouble companion (`._part.png`: 4 KB of metadata beside every file copied from a Mac, which made half
    of a folder "unreadable" and training refuse it) or a tool's folder (`.ipynb_checkpoints`, `.git`).
    """
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*")
                  if is_image_name(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and p.is_file())


def image_is_complete(data: bytes) -> bool:
    """True when the bytes hold a whole image as far as the format's trailer tells."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data.endswith(_PNG_END)
    if data.startswith(b"\xff\xd8"):
        return data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"
    if data.startswith(b"BM") and len(data) >= 6:
        return len(data) >= int.from_bytes(data[2:6], "little")
    if data.startswith(b"RIFF") and len(data) >= 8:  # WebP: the RIFF size counts every byte after it
        return len(data) >= 8 + int.from_bytes(data[4:8], "little")
    pnm = _pnm_fields(data)
    if pnm is not None and pnm[0] in b"456":
        kind, width, height, maxval, start = pnm
        channels, depth = _pnm_samples(kind, maxval)
        row = (width + 7) // 8 if kind == ord("4") else width * channels * depth  # P4: a bit per pixel
        return len(data) >= start + row * height
    return True  # TIFF, ASCII PNM and others: only a successful decode tells


def _pnm_fields(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(kind digit as a byte value, width, height, maxval, offset of the pixels) of a PNM header, or None."""
    if len(data) < 3 or data[0:1] != b"P" or data[1] not in b"123456":
        return None
    kind = data[1]
    wanted = 2 if kind in b"14" else 3
    values: list[int] = []
    pos, end = 2, min(len(data), 1024)  # a header is a few dozen bytes; comments may make it longer
    while len(values) < wanted:
        while pos < end and (data[pos] in b" \t\r\n" or data[pos] == ord("#")):
            if data[pos] == ord("#"):
                while pos < end and data[pos] not in b"\r\n":
                    pos += 1
            else:
                pos += 1
        start = pos
        while pos < end and data[pos:pos + 1].isdigit():
            pos += 1
        if pos == start or pos >= end:
            return None
        values.append(int(data[start:pos]))
    if kind in b"14":
        values.append(1)
    width, height, maxval = values
    if width <= 0 or height <= 0 or not 0 < maxval < 65536:
        return None
    return kind, width, height, maxval, pos + 1  # one whitespace byte ends the header


def _pnm_samples(kind: int, maxval: int) -> tuple[int, int]:
    """(channels, bytes per sample) of a PNM of `kind` (the digit's byte value): PPM is colour, the rest gray."""
    return 3 if kind in b"36" else 1, 2 if maxval > 255 else 1


def _png_header(data: bytes) -> tuple[int, int, int, int] | None:
    # The IHDR chunk must come first: signature, length 13, "IHDR", width, height, depth, colour type.
    if len(data) < 26 or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = _PNG_CHANNELS.get(colour)
    if channels is None or depth not in (1, 2, 4, 8, 16):
        return None
    return width, height, channels, 2 if depth == 16 else 1  # depths below 8 are expanded to bytes


def _jpeg_header(data: bytes) -> tuple[int, int, int, int] | None:
    # Walk the marker segments from SOI to the first SOFn; APPn segments (EXIF thumbnails included) are
    # skipped by their length, so an embedded thumbnail's frame is never taken for the image's.
    pos, end = 2, len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:
            return None
        while pos + 1 < end and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 1 >= end:
            return None
        marker = data[pos + 1]
        pos += 2
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xDA, 0xD9):
            return None  # scan data or the end before any frame header
        if pos + 2 > end:
            return None
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if length < 8 or pos + 8 > end:
                return None
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 2:pos + 8])
            if height == 0 or components == 0:
                return None  # height given later by a DNL marker: unknown
            return width, height, components, 1 if precision <= 8 else 2
        pos += length
    return None


def _bmp_header(data: bytes) -> tuple[int, int, int, int] | None:
    if len(data) < 26:
        return None
    info_size = int.from_bytes(data[14:18], "little")
    if info_size == 12:  # BITMAPCOREHEADER: 16-bit sizes, 3-byte palette entries
        width, height, _planes, bpp = struct.unpack("<hhHH", data[18:26])
        entry = 3
    elif info_size >= 40 and len(data) >= 54:
        width, height, _planes, bpp = struct.unpack("<iiHH", data[18:30])
        entry = 4
    else:
        return None
    if bpp in (24, 16):
        channels = 3
    elif bpp == 32:
        channels = 4
    elif bpp in (1, 4, 8):
        # OpenCV gives gray when every palette entry is gray, BGR otherwise.
        start = 14 + info_size
        used = int.from_bytes(data[46:50], "little") if entry == 4 else 0
        count = used if 0 < used <= 1 << bpp else 1 << bpp
        palette = data[start:start + count * entry]
        if len(palette) < count * entry:
            channels = 3  # a short palette: the bound, not a guess
        else:
            gray = all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette), entry))
            channels = 1 if gray else 3
    else:
        return None
    return abs(width), abs(height), channels, 1  # a negative height means rows stored top-down


_TIFF_TYPE_SIZES = {3: 2, 4: 4}  # SHORT, LONG: the types the size tags use


def _tiff_header(data: bytes) -> tuple[int, int, int, int] | None:
    order = "<" if data[:4] == b"II*\x00" else ">" if data[:4] == b"MM\x00*" else None
    if order is None or len(data) < 8:
        return None
    ifd = struct.unpack(order + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    tags: dict[int, int] = {}
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(data):
            return None
        tag, kind, n = struct.unpack(order + "HHI", data[at:at + 8])
        size = _TIFF_TYPE_SIZES.get(kind)
        if size is None or n == 0:
            continue
        # The first value; inline when the values fit in 4 bytes, else at the offset given there.
        offset = at + 8 if n * size <= 4 else struct.unpack(order + "I", data[at + 8:at + 12])[0]
        if offset + size > len(data):
            continue
        tags[tag] = struct.unpack(order + ("H" if size == 2 else "I"), data[offset:offset + size])[0]
    if 256 not in tags or 257 not in tags:
        return None
    bits = tags.get(258, 1)
    samples = tags.get(277, 1)
    if samples == 2:
        samples = 4  # gray+alpha comes back as BGRA
    return tags[256], tags[257], max(samples, 1), max(1, (bits + 7) // 8)


def _webp_header(data: bytes) -> tuple[int, int, int, int] | None:
    # RIFF, size, WEBP, then the first chunk: VP8X (extended), VP8L (lossless) or "VP8 " (lossy).
    if len(data) < 30 or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        alpha = bool(data[20] & 0x10)
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    elif chunk == b"VP8L":
        if data[20] != 0x2F:
            return None
        bits = int.from_bytes(data[21:25], "little")
        width, height, alpha = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool(bits >> 28 & 1)
    elif chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        alpha = False
    else:
        return None
    return width, height, 4 if alpha else 3, 1  # OpenCV gives BGR, or BGRA when there is alpha


def _pnm_header(data: bytes) -> tuple[int, int, int, int] | None:
    fields = _pnm_fields(data)
    if fields is None:
        return None
    kind, width, height, maxval, _ = fields
    return width, height, *_pnm_samples(kind, maxval)


def image_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, channels, bytes per sample) of the decoded image, read from the header alone.

    Channels and depth are those of OpenCV's IMREAD_UNCHANGED result (an upper bound where the header
    alone cannot tell, e.g. a PNG palette). None when the format is unknown or the header is unreadable;
    never raises on any bytes.
    """
    try:
        if data.startswith(_PNG_SIGNATURE):
            return _png_header(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_header(data)
        if data.startswith(b"BM"):
            return _bmp_header(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_header(data)
        if data.startswith(b"RIFF"):
            return _webp_header(data)
        if data.startswith(b"P"):
            return _pnm_header(data)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def decode_image(data: bytes, max_decoded_bytes: int = MAX_DECODED_BYTES) -> np.ndarray | None:
    """Decode bytes as OpenCV does (BGR/BGRA/gray, 8 or 16 bit); None when not an image.

    Raises ImageTooLarge, before decoding anything, when the header says the decoded array would take more
    than `max_decoded_bytes`; raises cv2.error for images OpenCV refuses, e.g. above CV_IO_MAX_IMAGE_PIXELS
    (the only bound for formats whose header is not read here).
    """
    if not data:
        return None
    header = image_header(data)
    if header is not None and header[0] * header[1] * header[2] * header[3] > max_decoded_bytes:
        raise ImageTooLarge(header, max_decoded_bytes)
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)


# A float image is read on a scale of 0..1 (preprocessing clips it there); beyond a grey level of rounding
# overshoot, values outside it mean another scale (a 0..255 image saved as float, a height map in mm) and
# clipping would score a white or black image instead of the part.
FLOAT_RANGE_SLACK = 1 / 255


def unscorable_pixels(image: np.ndarray) -> str | None:
    """Why the pixels of a decoded image cannot be scored, or None: preprocessing scales uint8, uint16 and float.

    OpenCV also decodes TIFFs of int32 (and other) pixels, whose range nothing tells; they are refused at the
    door rather than failing a batch (the daemon) or a whole training run. A float image with NaN or infinite
    pixels (a 3D sensor's missing points) would score NaN, which no threshold flags: refused too, as is one on
    another scale than 0..1.
    """
    if image.dtype in (np.uint8, np.uint16):
        return None
    if not np.issubdtype(image.dtype, np.floating):
        return f"pixels of type {image.dtype} are not scored (uint8, uint16 or float)"
    finite = np.isfinite(image)
    if not finite.all():
        bad = int(image.size - np.count_nonzero(finite))
        return (f"{bad} of {image.size} float pixel values are NaN or infinite: no score can be computed from "
                "them (fill or mask missing points before saving)")
    low, high = float(image.min()), float(image.max())
    if low < -FLOAT_RANGE_SLACK or high > 1 + FLOAT_RANGE_SLACK:
        return (f"float pixels are read on a scale of 0..1, these span {low:.6g}..{high:.6g} (save as 8- or "
                "16-bit, or scale to 0..1)")
    return None


class UnreadableImage(ValueError):
    """An image file that cannot be read, decoded or scored; the message says why."""


def load_image(path: Path) -> np.ndarray:
    """Decode an image file as OpenCV does; UnreadableImage says why when it cannot be read, decoded or scored."""
    try:
        with open(path, "rb") as f:
            image = decode_image(f.read())
    except OSError as exc:
        raise UnreadableImage(f"cannot read: {exc.strerror or exc}") from None
    except ImageTooLarge as exc:
        raise UnreadableImage(f"too large: {exc}") from None
    except cv2.error as exc:
        raise UnreadableImage(f"OpenCV refused it: {str(exc).strip().splitlines()[-1][:200]}") from None
    if image is None or not image.size:
        raise UnreadableImage("not an image OpenCV can decode")
    problem = unscorable_pixels(image)
    if problem is not None:
        raise UnreadableImage(problem)
    return image


def read_image(path: Path) -> np.ndarray | None:
    """Decode an image file as OpenCV does; None when it cannot be read, decoded or scored."""
    try:
        return load_image(path)
    except UnreadableImage:
        return None
