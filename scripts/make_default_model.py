"""Build the shipped default model bundle offline from a texture that ships inside scikit-image.

Normal parts: 600 random 64x64 crops of `skimage.data.brick()` (a 512x512 grayscale photo of a brick
wall), fixed seed; the texture settings (monitor.training.options.TEXTURE_SETTINGS: fully convolutional autoencoder,
SSIM loss, 80 epochs, score smooth_quantile). Everything else is `monitor train`'s defaults.
Takes about three minutes on 2 CPU cores; the bundle is about 3 MB.
Run with `make model` (or `python scripts/make_default_model.py --out DIR`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.training.options import TEXTURE_SETTINGS, TrainOptions  # noqa: E402
from monitor.training.train import train_bundle  # noqa: E402

SEED = 7
CROPS = 600
SIZE = 64


def brick_crops(n: int = CROPS, size: int = SIZE, seed: int = SEED) -> list[np.ndarray]:
    """Random crops of skimage's brick texture (uint8 gray)."""
    from skimage import data

    brick = data.brick()
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, brick.shape[0] - size + 1, n)
    xs = rng.integers(0, brick.shape[1] - size + 1, n)
    return [np.ascontiguousarray(brick[y:y + size, x:x + size]) for y, x in zip(ys, xs, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("models/default"), help="bundle folder to write")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    # The texture settings: on the texture protocol they beat the seeds' method and PCA (benchmarks/quality.py).
    options = TrainOptions(size=(SIZE, SIZE), channels=1, seed=SEED, quiet=args.quiet, auto=False,
                           **TEXTURE_SETTINGS)
    with tempfile.TemporaryDirectory(prefix="brick-crops-") as tmp:
        for i, crop in enumerate(brick_crops()):
            cv2.imwrite(str(Path(tmp) / f"brick_{i:04d}.png"), crop)
        bundle = train_bundle(Path(tmp), args.out, options,
                              progress=None if args.quiet else lambda line: print(line, file=sys.stderr))
    bundle.meta["data"]["folder"] = f"skimage.data.brick(): {CROPS} random {SIZE}x{SIZE} crops, seed {SEED}"
    # Keep the recorded data description (the temp folder is gone); rewrite only the sidecar.
    from monitor.model.bundle import save_bundle

    save_bundle(args.out, bundle.model, bundle.meta)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {bundle.describe()} ({size / 2**20:.1f} MB with report)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
