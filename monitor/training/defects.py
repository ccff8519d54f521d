"""Synthetic defects made from normal images, to choose settings and to estimate a detection rate.

Training sees normal images only, so the defects used to compare architectures and scores, and to report the
detection rate to expect, are made at training time from the normal images themselves. They are deliberately
generic, common ways a surface goes wrong rather than a copy of any benchmark's defects, so that what is chosen
on them carries over to lines nobody tuned for:

- ``cutpaste``: a patch of this image (or of another normal image), maybe rotated, flipped or scaled and slightly
  jittered in brightness and contrast, pasted elsewhere with a hard or soft edge (CutPaste, Li et al. 2021);
- ``noise``: a region of strong Gaussian or salt-and-pepper noise;
- ``blur``: a region out of focus or smeared, placed where the image has detail to lose;
- ``blob_brightness``: a large, smooth, elliptical darker or lighter stain of low contrast;
- ``blob_colour``: a smooth hue stain that keeps the brightness (a brightness blob on gray images);
- ``line``: a thin scratch, 1-3 px wide, straight or slightly curved, darker or lighter than around it;
- ``speck``: one to three small dark or light spots of about 2-6 px.

Sizes are fractions of the shorter image side, never below ``min_size_px`` (the smallest extent that survives the
working resolution; a line is thin by nature, so for it this bounds the length) and well under half the image
area. Contrasts are drawn from ranges a person can see without them being glaring, and a change goes the way
there is headroom, so a white or a black part still gets one. Pixels outside a defect's mask are left exactly as
they were. A family that cannot visibly change an image (blur on a featureless surface) gives way to a brightness
blob, and the Defect names the family that was made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

FAMILIES: tuple[str, ...] = ("cutpaste", "noise", "blur", "blob_brightness", "blob_colour", "line", "speck")
MIN_VISIBLE = 0.02  # mean change inside the mask (largest channel, fraction of the range): ~5 grey levels of 255
_DELTA = (0.08, 0.4)  # stains: below this nobody sees them, above it they are trivial
_THIN_DELTA = (0.12, 0.45)  # lines and specks cover few pixels, so they need more contrast to be seen at all
_COLOUR = (0.1, 0.3)  # largest channel shift of a hue stain
_LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)
_TRIES = 8

Maker = Callable[[np.ndarray, np.random.Generator, np.ndarray | None, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Defect:
    image: np.ndarray  # same shape and dtype as the input
    mask: np.ndarray  # bool HxW, where the image was changed
    family: str


def _range(dtype: np.dtype) -> float:
    if dtype in (np.uint8, np.uint16):
        return float(np.iinfo(dtype).max)
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise TypeError(f"images must be uint8, uint16 or float in [0, 1], not {dtype}")


def _to_float(image: np.ndarray, channels: int | None = None) -> np.ndarray:
    """HxWxC float32 in [0, 1]; `channels` converts a donor to the image's channel count."""
    x = (image.astype(np.float32) / _range(image.dtype)).reshape(*image.shape[:2], -1)
    if channels == 3 and x.shape[2] == 1:
        return np.repeat(x, 3, axis=2)
    if channels == 1 and x.shape[2] == 3:
        return (x @ _LUMA_BGR)[..., None]
    return x


def _from_float(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    scale = _range(like.dtype)
    y = np.clip(x, 0.0, 1.0).reshape(like.shape) * scale
    return (np.rint(y) if scale != 1.0 else y).astype(like.dtype)


def _signed(rng: np.random.Generator, lo: float, hi: float, level: float) -> float:
    """A change of random size and sign, turned the other way when it would clip and that way has more room."""
    size, sign = rng.uniform(lo, hi), (1.0 if rng.random() < 0.5 else -1.0)
    room = {1.0: 1.0 - level, -1.0: level}
    return -sign * size if room[sign] < size and room[-sign] > room[sign] else sign * size


def _radii(rng: np.random.Generator, side: int, lo: float, hi: float, min_px: int) -> tuple[float, float]:
    r, aspect = rng.uniform(lo, hi) * side, np.exp(rng.uniform(-0.7, 0.7))
    # a shape whose radii are >= min_px/2 + 0.5 always covers at least min_px pixel centres across
    floor = min_px / 2 + 0.5
    return tuple(float(np.clip(v, floor, max(floor, 0.4 * side))) for v in (r * aspect**0.5, r / aspect**0.5))


def _shape(rng: np.random.Generator, h: int, w: int, ry: float, rx: float, box: bool = False,
           centre: tuple[float, float] | None = None) -> tuple[np.ndarray, float, float]:
    """Normalised distance (< 1 inside) of a rotated ellipse or box wholly inside the image, and its centre."""
    a = 0.0 if centre else rng.uniform(0, np.pi)
    c, s = abs(np.cos(a)), abs(np.sin(a))
    ey, ex = (rx * s + ry * c, rx * c + ry * s) if box else (np.hypot(rx * s, ry * c), np.hypot(rx * c, ry * s))
    cy, cx = centre or (rng.uniform(ey, h - 1 - ey) if h - 1 > 2 * ey else (h - 1) / 2,
                        rng.uniform(ex, w - 1 - ex) if w - 1 > 2 * ex else (w - 1) / 2)
    yy, xx = np.ogrid[:h, :w]
    dy, dx = yy - cy, xx - cx
    u, v = (dx * np.cos(a) + dy * np.sin(a)) / rx, (dy * np.cos(a) - dx * np.sin(a)) / ry
    rho = np.maximum(np.abs(u), np.abs(v)) if box else np.sqrt(u * u + v * v)
    return rho.astype(np.float32), cy, cx


def _alpha(rho: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A hard or a soft (feathered) edge, whose support is exactly the shape."""
    soft = rng.uniform(0.1, 0.6) if rng.random() < 0.5 else 0.0
    alpha = np.clip((1.0 - rho) / soft, 0.0, 1.0) if soft else (rho < 1).astype(np.float32)
    return alpha[..., None], rho < 1


def _cutpaste(x: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, min_px: int):
    h, w = x.shape[:2]
    ry, rx = _radii(rng, min(h, w), 0.08, 0.25, min_px)
    rho, cy, cx = _shape(rng, h, w, ry, rx, box=rng.random() < 0.7)
    src = donor if donor is not None and rng.random() < 0.5 else x
    for _ in range(10):  # from elsewhere: a patch pasted onto itself would not be a defect
        sy, sx = rng.uniform(0, src.shape[0] - 1), rng.uniform(0, src.shape[1] - 1)
        if src is not x or np.hypot(sy - cy, sx - cx) > 2 * max(ry, rx):
            break
    angle = rng.uniform(-np.pi, np.pi) if rng.random() < 0.5 else 0.0
    scale, flip = np.exp(rng.uniform(-0.3, 0.3)), (-1.0 if rng.random() < 0.3 else 1.0)
    a = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.diag([flip, 1.0])
    m = np.hstack([a, np.array([[sx], [sy]]) - a @ np.array([[cx], [cy]])])  # destination -> source
    patch = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT_101).reshape(x.shape)
    alpha, mask = _alpha(rho, rng)
    mean = patch[mask].mean(axis=0)
    # jitter around the patch's own mean, so even a patch of a flat image stands out by its brightness
    patch = mean + (patch - mean) * rng.uniform(0.85, 1.15) + _signed(rng, 0.04, 0.12, float(mean.mean()))
    return x * (1 - alpha) + patch * alpha, mask


def _noise(x: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, min_px: int):
    h, w, ch = x.shape
    rho, _, _ = _shape(rng, h, w, *_radii(rng, min(h, w), 0.08, 0.25, min_px), box=rng.random() < 0.5)
    if rng.random() < 0.5:  # salt and pepper: dead and saturated pixels
        mask, y = rho < 1, x.copy()
        hit = mask & (rng.random((h, w)) < rng.uniform(0.04, 0.2))
        y[hit] = (rng.random(int(hit.sum())) < 0.5)[:, None]
        return y, mask
    alpha, mask = _alpha(rho, rng)
    return x + alpha * rng.normal(0.0, rng.uniform(0.05, 0.25), (h, w, 1 if rng.random() < 0.5 else ch)), mask


def _blur(x: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, min_px: int):
    h, w = x.shape[:2]
    side = min(h, w)
    if rng.random() < 0.5:  # out of focus
        blurred = cv2.GaussianBlur(x, (0, 0), rng.uniform(1.0, 1.0 + side / 64))
    else:  # smear: motion along a random direction
        n, a = int(rng.integers(2, 3 + side // 32)), rng.uniform(0, np.pi)
        kernel = np.zeros((2 * n + 1, 2 * n + 1), np.float32)
        dx, dy = round(n * np.cos(a)), round(n * np.sin(a))
        cv2.line(kernel, (n - dx, n - dy), (n + dx, n + dy), 1.0)
        blurred = cv2.filter2D(x, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT_101)
    change = np.abs(blurred.reshape(x.shape) - x).max(axis=2)
    # blur only shows where there is detail to lose, so keep the candidate place that changes most
    shapes = [_shape(rng, h, w, *_radii(rng, side, 0.1, 0.25, min_px), box=rng.random() < 0.5)[0] for _ in range(6)]
    rho = max(shapes, key=lambda r: float(change[r < 1].mean()))
    alpha, mask = _alpha(rho, rng)
    return x + alpha * (blurred.reshape(x.shape) - x), mask


def _blob(rng: np.random.Generator, h: int, w: int, min_px: int) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian bump cut at ~8% of its peak, so it is smooth yet has a finite support (the mask)."""
    rho, _, _ = _shape(rng, h, w, *_radii(rng, min(h, w), 0.12, 0.3, min_px))
    k = 2.5
    weight = np.clip((np.exp(-k * rho**2) - np.exp(-k)) / (1 - np.exp(-k)), 0.0, None)
    return weight[..., None], rho < 1


def _blob_brightness(x: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, min_px: int):
    weight, mask = _blob(rng, *x.shape[:2], min_px)
    return x + weight * _signed(rng, *_DELTA, float(x[mask].mean())), mask


def _blob_colour(x: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, min_px: int):
    weight, mask = _blob(rng, *x.shape[:2], min_px)
    shift = rng.normal(size=3).astype(np.float32)
    shift -= (shift @ _LUMA_BGR) / (_LUMA_BGR @ _LUMA_BGR) * _LUMA_BGR  # no luma: the hue moves, not the light
    shift *= rng.uniform(*_COLOUR) / np.abs(shift).max()
    level = x[mask].mean(axis=0)
    clipped = [np.abs(np.clip(level + s, 0, 1) - level - s).sum() for s in (shift, -shift)]
    return x + weight * (shift if clipped[0] <= clipped[1] else -shift), mask


def _paint(x: np.ndarray, rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Set the masked pixels to their own mean made darker or lighter: a mark of its own tone, not added texture."""
    y, mean = x.copy(), x[mask].mean(axis=0)
    y[mask] = mean + _signed(rng, *_THIN_DELTA, float(mean.mean()))
    return y


def _line(x: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, min_px: int):
    h, w = x.shape[:2]
    length = min(max(rng.uniform(0.25, 0.7) * min(h, w), 2 * min_px), min(h, w) - 1)
    a = rng.uniform(0, np.pi)
    d = np.array([np.cos(a), np.sin(a)])
    bend = rng.uniform(-0.15, 0.15) * length if rng.random() < 0.5 else 0.0
    t = np.linspace(-0.5, 0.5, 17)[:, None]
    offsets = t * length * d + (1 - 4 * t**2) * bend * np.array([-d[1], d[0]])
    lo, hi = -offsets.min(axis=0), np.array([w - 1, h - 1]) - offsets.max(axis=0)
    points = offsets + rng.uniform(lo, np.maximum(lo, hi))  # the whole curve inside, not squashed on a border
    points = np.clip(np.rint(points), 0, [w - 1, h - 1]).astype(np.int32)
    canvas = np.zeros((h, w), np.uint8)
    cv2.polylines(canvas, [points], False, 1, int(rng.integers(1, 3)))  # OpenCV thickness 2 is ~3 px wide
    return _paint(x, rng, canvas > 0), canvas > 0


def _speck(x: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, min_px: int):
    h, w = x.shape[:2]
    lo, hi = max(2, min_px), max(2, min_px, min(6, min(h, w) // 6))  # a speck stays small next to the image too
    cy, cx = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 4))):  # a few spots close together, like a splash
        r = rng.uniform(lo, hi) / 2 + 0.5
        py, px = np.clip([cy, cx] + rng.normal(0, hi, 2), r, [h - 1 - r, w - 1 - r])
        mask |= _shape(rng, h, w, r, r, centre=(float(py), float(px)))[0] < 1
    return _paint(x, rng, mask), mask


_MAKERS: dict[str, Maker] = {"cutpaste": _cutpaste, "noise": _noise, "blur": _blur,
                             "blob_brightness": _blob_brightness, "blob_colour": _blob_colour,
                             "line": _line, "speck": _speck}


def make_defect(image: np.ndarray, rng: np.random.Generator, family: str | None = None,
                donor: np.ndarray | None = None, min_size_px: int = 4) -> Defect:
    """One synthetic defect on a copy of `image` (uint8/uint16/float32 in [0,1]; HxW, HxWx1 or HxWx3).

    `family` is drawn at random when None. `donor`, another normal image of any size, dtype and channel count,
    is where `cutpaste` takes its patch half of the time. Raises ValueError for an unknown family, a shape that is
    not an image, or an image less than twice `min_size_px` on a side.
    """
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(f"expected an HxW, HxWx1 or HxWx3 image, got shape {image.shape}")
    if min_size_px < 1 or 2 * min_size_px > min(image.shape[:2]):
        raise ValueError(f"a {image.shape[0]}x{image.shape[1]} image is too small for defects of {min_size_px} px")
    family = family if family is not None else FAMILIES[int(rng.integers(len(FAMILIES)))]
    if family not in _MAKERS:
        raise ValueError(f"unknown defect family {family!r}; known: {', '.join(FAMILIES)}")
    x = _to_float(image)
    if family == "blob_colour" and x.shape[2] == 1:
        family = "blob_brightness"  # no colour to shift
    d = None if donor is None else _to_float(donor, x.shape[2])
    # a brightness blob goes where there is headroom, so it is the fallback that shows on any image
    for fam in [family] * _TRIES + ["blob_brightness"] * _TRIES:
        y, mask = _MAKERS[fam](x, rng, d, min_size_px)
        out = image.copy()
        out[mask] = _from_float(y, image)[mask]
        if np.abs(_to_float(out) - x).max(axis=2)[mask].mean() >= MIN_VISIBLE:
            break
    return Defect(out, mask, fam)


def defect_set(images: Sequence[np.ndarray], n: int, rng: np.random.Generator,
               families: Sequence[str] = FAMILIES, min_size_px: int = 4) -> list[Defect]:
    """n defects spread evenly over the families, each on a random image (donors from the others).

    `blob_colour` is left out when no image has colour, since there it would only repeat `blob_brightness`.
    The counts of the families differ by at most one, unless a family had to fall back (see make_defect).
    """
    if not images:
        raise ValueError("defect_set needs at least one image")
    colour = any(im.ndim == 3 and im.shape[2] == 3 for im in images)
    chosen = [f for f in families if colour or f != "blob_colour"] or list(families)
    # which families get the n % k extra slots is drawn, so none is always favoured
    order = [chosen[i] for i in rng.permutation(len(chosen))]
    defects = []
    for slot in rng.permutation(n):
        i = int(rng.integers(len(images)))
        j = int(rng.integers(len(images) - 1)) if len(images) > 1 else None
        donor = None if j is None else images[j + (j >= i)]
        defects.append(make_defect(images[i], rng, order[slot % len(order)], donor, min_size_px))
    return defects
