"""Detection quality on six protocols built from package data: seed method, PCA, the old and the new default.

Protocols (benchmarks/protocols.py has the details; fixed seeds, no downloads):
  digits   MNIST 1s normal (1% unlabelled 3s in training) vs 3s and 7s, 28x28 gray;
  gravel   64x64 gray crops of skimage.data.gravel(), drawn defects (crack, hole, foreign, smudge, dent);
  tissue   64x64 colour crops of skimage.data.immunohistochemistry(); colour-only defects that keep the luma
           (hue_shift, tint, bleach) and ordinary ones (foreign, jpeg);
  part256  256x256 gray cast parts; defects 1-7 px wide (pit, particle, scratch, crack, chip);
  brick    64x64 gray crops of skimage.data.brick(), the same drawn defects as gravel (gravel as foreign);
  brick256 256x256 gray views of a brick wall, each at its own offset; defects 1-6 px wide (pit, particle,
           scratch, crack).
The test defects are drawn by the benchmark itself, differently from the synthetic defects `monitor train` makes
from the normal images (monitor/training/defects.py), so the monitor is not graded on its own generator. Every
protocol also has a VALIDATION split (other images or blocks of the photo, another seed): choose settings on it
(`--split validation`), never on the test split.

Methods (each picks its threshold from normal data only; P, R, F1 are at that threshold):
  seed  the seeds' tutorial: ConvAE (32, 64), latent 16, Adam 1e-3, 20 epochs, batch 32, MSE, gray, input at the
        image size (shrunk to 64x64 when larger); threshold = 0.999 quantile of the training scores;
  pca   PCA keeping 95% of the variance, on the native pixels (colour too); reconstruction MSE; 0.999 quantile;
  old   `monitor train` before automatic settings: TrainOptions(auto=False) (seed architecture, 64x64 gray, mse);
  new   `monitor train DIR` with no options: train_bundle(folder of PNGs, out, TrainOptions()).
old and new are trained from a folder of PNG files, as a user would, and the test images are scored through
BatchScorer(bundle).score (the daemon's path) at the bundle's own threshold, bundle.default_threshold.

Run:   .venv/bin/python benchmarks/quality.py [--only digits,tissue] [--methods seed,pca,old,new] [--quick]
                                              [--split test|validation] [--json FILE]
Full run on the 2-core CPU: the seed method, PCA and the old default together take roughly 10 minutes (the
old default's 60 epochs dominate, less when early stopping ends it); the new default adds its own training time per
protocol (its budget is a fixed number of samples, about 4-7 minutes), so the whole run is about 45-50 minutes;
`--methods` and `--only` run parts of it. --quick (smaller sets, 5 epochs for every trained model) is a smoke
run of a few minutes. Progress goes to stderr; stdout has the table, the recall by
defect kind, and ONE JSON object on the last line (also written to --json FILE).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.protocols import PROTOCOLS, SEED, VALIDATION_SEED, Protocol, Split, build  # noqa: E402
from monitor.training.quality import auroc, average_precision, best_f1, detection_at  # noqa: E402

METHODS: dict[str, str] = {"seed": "seed method", "pca": "PCA", "old": "old default", "new": "new default"}
SEED_EPOCHS, QUICK_EPOCHS = 20, 5
SEED_MAX_SIDE = 64  # the seed method shrinks larger images to 64x64, as `monitor train` used to


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Result:
    protocol: str
    method: str
    scores: np.ndarray | None = None
    threshold: float = float("nan")
    train_seconds: float = float("nan")
    score_ms: float = float("nan")  # per image, scoring the evaluated split (preprocessing included)
    settings: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    ablation: Result | None = None  # the same bundle without its defect network, when it has one
    error: str | None = None


# ---------------------------------------------------------------------------------------------- seed method


def _gray(images: np.ndarray) -> np.ndarray:
    if images.ndim == 4:
        return np.stack([cv2.cvtColor(im, cv2.COLOR_BGR2GRAY) for im in images])
    return images


def _seed_inputs(images: np.ndarray) -> np.ndarray:
    """Gray float inputs in [0, 1]; larger than 64 px shrunk to 64x64 (INTER_AREA)."""
    g = _gray(images)
    if max(g.shape[1:3]) > SEED_MAX_SIDE:
        g = np.stack([cv2.resize(im, (SEED_MAX_SIDE, SEED_MAX_SIDE), interpolation=cv2.INTER_AREA) for im in g])
    return g.astype(np.float32)[..., None] / 255.0


def seed_method(p: Protocol, split: Split, seed: int, epochs: int) -> Result:
    """The tutorial: ConvAE (32, 64), latent 16, Adam 1e-3, batch 32, MSE; threshold at the 0.999 training quantile."""
    import keras

    from monitor.training.architecture import build_autoencoder

    start = time.monotonic()
    keras.utils.set_random_seed(seed)
    xt = _seed_inputs(p.train)
    h, w = xt.shape[1:3]
    model = build_autoencoder(h, w, 1, (32, 64), 16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(xt, xt, epochs=epochs, batch_size=32, shuffle=True, verbose=0)

    def mse(x: np.ndarray) -> np.ndarray:
        r = model.predict(x, batch_size=64, verbose=0)
        return ((x - r) ** 2).mean(axis=(1, 2, 3)).astype(np.float64)

    threshold = float(np.quantile(mse(xt), 0.999))
    train_s = time.monotonic() - start
    start = time.monotonic()
    scores = mse(_seed_inputs(split.images))
    ms = 1000 * (time.monotonic() - start) / len(split)
    return Result(p.name, METHODS["seed"], scores, threshold, train_s, ms,
                  {"input": f"{h}x{w}x1", "epochs": epochs, "score": "mse", "threshold": "0.999 quantile of training"})


# ------------------------------------------------------------------------------------------------------- PCA


def pca_method(p: Protocol, split: Split, variance: float = 0.95) -> Result:
    """PCA keeping `variance` of the training variance on the native pixels; reconstruction MSE; 0.999 quantile."""
    start = time.monotonic()
    xt = p.train.reshape(len(p.train), -1).astype(np.float64) / 255.0
    mean = xt.mean(axis=0)
    _, sv, vt = np.linalg.svd(xt - mean, full_matrices=False)
    k = int(np.searchsorted(np.cumsum(sv**2) / np.sum(sv**2), variance) + 1)
    basis = vt[:k]

    def err(x: np.ndarray) -> np.ndarray:
        c = x - mean
        return ((c - c @ basis.T @ basis) ** 2).mean(axis=1)

    threshold = float(np.quantile(err(xt), 0.999))
    train_s = time.monotonic() - start
    start = time.monotonic()
    scores = err(split.images.reshape(len(split), -1).astype(np.float64) / 255.0)
    ms = 1000 * (time.monotonic() - start) / len(split)
    return Result(p.name, METHODS["pca"], scores, threshold, train_s, ms,
                  {"components": k, "variance": variance, "threshold": "0.999 quantile of training"})


# ------------------------------------------------------------------------------------ monitor train defaults


def default_options(which: str, quick: bool, train_seed: int | None) -> tuple[Any, str | None]:
    """TrainOptions of the old default (auto=False) or the new one (no options), and a note when they differ
    from what the row claims."""
    from monitor.training.options import TrainOptions

    kwargs: dict[str, Any] = {}
    note = None
    if which == "old":
        # The fixed defaults, and saved even when the health check would refuse the model: the row shows what
        # a user got before automatic settings (BatchNorm recalibration, now always on, included).
        kwargs.update(auto=False, allow_degenerate=True)
    if quick:
        kwargs["epochs"] = QUICK_EPOCHS
        note = "; ".join(filter(None, [note, f"--quick: epochs={QUICK_EPOCHS}"]))
    if train_seed is not None:
        kwargs["seed"] = train_seed
    return TrainOptions(**kwargs), note


def write_folder(images: np.ndarray, folder: Path) -> Path:
    """The images as PNG files (gray or BGR), as a user's folder of good parts."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        if not cv2.imwrite(str(folder / f"{i:05d}.png"), image):
            raise OSError(f"cannot write {folder / f'{i:05d}.png'}")
    return folder


def bundle_settings(meta: dict) -> dict[str, Any]:
    """What a bundle was actually trained with (the sidecar), compactly."""
    opts = meta.get("training", {}).get("options", {})
    out: dict[str, Any] = {k: opts[k] for k in ("channels", "architecture", "loss", "batch_size", "epochs")
                           if k in opts}
    out["input"] = "x".join(str(meta["input"][k]) for k in ("height", "width", "channels"))
    if meta.get("tiling"):
        out["tiling"] = meta["tiling"]
    out["score"] = meta.get("score", {}).get("name")
    out["epochs_run"] = meta.get("training", {}).get("epochs_run")
    out["threshold"] = meta.get("threshold", {}).get("method")
    known = {"format", "format_version", "input", "preprocessing", "architecture", "score", "calibration",
             "threshold", "training", "data", "versions", "tiling"}
    extra = sorted(set(meta) - known)
    if extra:
        out["other_sidecar_sections"] = extra
    return out


def _progress(tag: str) -> Callable[[str], None]:
    def progress(line: str) -> None:
        if line.startswith("epoch "):  # every 10th epoch is enough on stderr
            done = line.split()[1].split("/")[0]
            if not done.isdigit() or (int(done) != 1 and int(done) % 10):
                return
        say(f"    [{tag}] {line}")

    return progress


def monitor_default(p: Protocol, split: Split, which: str, workdir: Path, quick: bool,
                    train_seed: int | None) -> Result:
    """Train from a folder of PNGs with train_bundle, score through BatchScorer(bundle).score at its threshold."""
    from monitor.training.train import train_bundle

    options, note = default_options(which, quick, train_seed)
    folder = workdir / p.name / "good"
    if not folder.is_dir():
        write_folder(p.train, folder)
    start = time.monotonic()
    bundle = train_bundle(folder, workdir / p.name / f"bundle-{which}", options,
                          progress=_progress(f"{p.name}/{which}"))
    train_s = time.monotonic() - start
    scores, ms = _scored(bundle, split)
    result = Result(p.name, METHODS[which], scores, bundle.default_threshold, train_s, ms,
                    bundle_settings(bundle.meta), note)
    base = without_discriminator(bundle)
    if base is not None:
        scores, ms = _scored(base, split)
        result.ablation = Result(p.name, f"{METHODS[which]} without its defect network", scores,
                                 base.default_threshold, train_s, ms, bundle_settings(base.meta),
                                 "the same bundle scored without its defect network, at the threshold it had "
                                 "before the network joined")
    return result


def _scored(bundle: Any, split: Split) -> tuple[np.ndarray, float]:
    """Scores of the split through BatchScorer(bundle).score, and ms per image."""
    from monitor.model.scorer import BatchScorer

    scorer = BatchScorer(bundle)
    images = list(split.images)
    scorer.score(images[:1])  # trace the fixed-shape graph once, as the daemon does at start
    start = time.monotonic()
    scores = np.concatenate([scorer.score(images[g]).scores for g in scorer.call_groups(images)])
    return scores, 1000 * (time.monotonic() - start) / len(images)


def without_discriminator(bundle: Any) -> Any:
    """The bundle as it was before its defect network joined (None: it has none)."""
    from monitor.model.bundle import Bundle
    from monitor.training.discriminator import decision_of

    decision = decision_of(bundle.meta.get("training") or {}) or {}
    if bundle.sidecar.discriminator is None or "calibration_without" not in decision:
        return None
    meta = {k: v for k, v in bundle.meta.items() if k != "discriminator"}
    meta["calibration"] = {**meta["calibration"], "scores": decision["calibration_without"]}
    return Bundle(path=bundle.path, model=bundle.model, meta=meta, density=bundle.density)


# ---------------------------------------------------------------------------------------------------- report


def figures(split: Split, r: Result) -> dict[str, Any]:
    """AUROC, AP, P/R/F1 at the method's threshold, best F1 (for comparison), recall by defect kind."""
    out: dict[str, Any] = {"protocol": r.protocol, "method": r.method, "note": r.note, "error": r.error,
                           "train_seconds": round(r.train_seconds, 2), "score_ms_per_image": round(r.score_ms, 3),
                           "settings": r.settings}
    if r.scores is None:
        return out
    d = detection_at(r.scores, split.labels, r.threshold)
    kinds = np.array(split.kinds)
    flagged = r.scores > r.threshold
    out.update(auroc=round(auroc(r.scores, split.labels), 4), ap=round(average_precision(r.scores, split.labels), 4),
               precision=round(d.precision, 4), recall=round(d.recall, 4), f1=round(d.f1, 4),
               false_positive_rate=round(d.false_positive_rate, 4), threshold=r.threshold,
               best_f1=round(best_f1(r.scores, split.labels).f1, 4),
               recall_by_kind={k: round(float(flagged[kinds == k].mean()), 3) for k in dict.fromkeys(split.kinds)
                               if k != "normal"})
    return out


HEADER = ("| protocol | method | AUROC | AP | precision | recall | F1 | train s | score ms/img |\n"
          "|---|---|---|---|---|---|---|---|---|")


def row(f: dict[str, Any]) -> str:
    if f.get("auroc") is None:
        return f"| {f['protocol']} | {f['method']} | failed: {f['error']} | | | | | | |"
    return (f"| {f['protocol']} | {f['method']} | {f['auroc']:.4f} | {f['ap']:.4f} | {f['precision']:.3f} | "
            f"{f['recall']:.3f} | {f['f1']:.3f} | {f['train_seconds']:.0f} | {f['score_ms_per_image']:.2f} |")


def kind_table(rows: list[dict[str, Any]]) -> str:
    """Recall by defect kind at each method's own threshold (and the false positive rate on normals)."""
    lines = []
    for protocol in dict.fromkeys(f["protocol"] for f in rows):
        mine = [f for f in rows if f["protocol"] == protocol and f.get("recall_by_kind")]
        if not mine:
            continue
        kinds = list(mine[0]["recall_by_kind"])
        lines += [f"| {protocol} | " + " | ".join(kinds) + " | FPR on normals |",
                  "|---|" + "---|" * (len(kinds) + 1)]
        lines += [f"| {f['method']} | " + " | ".join(f"{f['recall_by_kind'][k]:.2f}" for k in kinds)
                  + f" | {f['false_positive_rate']:.2f} |" for f in mine]
        lines.append("")
    return "\n".join(lines)


def _names(value: str, known: dict | tuple, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or value!r} (known: {', '.join(known)})")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=lambda v: _names(v, PROTOCOLS, "protocol"), default=list(PROTOCOLS),
                        help=f"comma-separated protocols (default all: {','.join(PROTOCOLS)})")
    parser.add_argument("--methods", type=lambda v: _names(v, METHODS, "method"), default=list(METHODS),
                        help=f"comma-separated methods (default all: {','.join(METHODS)})")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: smaller sets, {QUICK_EPOCHS} epochs for every trained model")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="evaluate on the test split (default) or on the validation split (to choose settings)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the training images and the test split")
    parser.add_argument("--validation-seed", type=int, default=VALIDATION_SEED, help="seed of the validation split")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="also pass seed=N to the old and new defaults (repeatable runs; default: no seed, "
                             "as a user)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the PNG folders and bundles here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # model.predict's retracing warnings on new shapes

    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    summaries: dict[str, Any] = {}
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        workdir = args.workdir or Path(tmp)
        for name in args.only:
            t0 = time.monotonic()
            p = build(name, quick=args.quick, seed=args.seed, validation_seed=args.validation_seed)
            split = p.split(args.split)
            summaries[name] = p.summary()
            say(f"[{name}] {p.title}: {len(p.train)} training images {summaries[name]['image']}, "
                f"{args.split} split {int((split.labels == 0).sum())} normal + {int(split.labels.sum())} anomalous "
                f"(built in {time.monotonic() - t0:.1f} s)")
            done: dict[str, Result] = {}
            for method in args.methods:
                say(f"[{name}] {METHODS[method]} ...")
                try:
                    if method == "seed":
                        r = seed_method(p, split, args.seed, QUICK_EPOCHS if args.quick else SEED_EPOCHS)
                    elif method == "pca":
                        r = pca_method(p, split)
                    else:
                        same = next((m for m in done if m in ("old", "new") and
                                     default_options(m, args.quick, args.train_seed)[0] ==
                                     default_options(method, args.quick, args.train_seed)[0]), None)
                        if same is not None:  # identical options (no `auto` yet): do not train the same twice
                            prev = done[same]
                            r = Result(name, METHODS[method], prev.scores, prev.threshold, prev.train_seconds,
                                       prev.score_ms, prev.settings, f"same options as the {METHODS[same]}: row "
                                                                      "repeated, not retrained")
                        else:
                            r = monitor_default(p, split, method, workdir, args.quick, args.train_seed)
                except Exception as exc:  # one failed method must not lose the others' figures
                    logging.getLogger("benchmark").exception("%s/%s failed", name, method)
                    r = Result(name, METHODS[method], error=f"{type(exc).__name__}: {exc}")
                done[method] = r
                f = figures(split, r)
                rows.append(f)
                print(row(f), flush=True)
                if r.ablation is not None:
                    rows.append(figures(split, r.ablation))
                    print(row(rows[-1]), flush=True)
                say(f"[{name}] {METHODS[method]}: trained {r.train_seconds:.0f} s"
                    + (f", recall by kind {f['recall_by_kind']}" if f.get("recall_by_kind") else "")
                    + (f", settings {f['settings']}" if method in ("old", "new") and f["settings"] else "")
                    + (f" ({r.note})" if r.note else ""))
    print()
    print(kind_table(rows))
    for f in rows:
        if f.get("note"):
            print(f"note: {f['protocol']} / {f['method']}: {f['note']}")
    result = {"benchmark": "quality", "split": args.split, "quick": args.quick, "seed": args.seed,
              "validation_seed": args.validation_seed, "train_seed": args.train_seed, "cpus": os.cpu_count(),
              "seconds": round(time.monotonic() - started, 1), "protocols": summaries, "results": rows}
    text = json.dumps(result, default=float)
    if args.json:
        args.json.write_text(text + "\n")
    print(text, flush=True)
    say(f"done in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
