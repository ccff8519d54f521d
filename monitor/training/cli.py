"""The model's subcommands: train, score, info, evaluate, labels export (registered into `monitor`'s parser)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.commands import fail

if TYPE_CHECKING:
    from monitor.training.options import TrainOptions

# Heavy imports (TensorFlow) happen inside the handlers, so `monitor --help` stays instant.


# option name -> (flag, help); every TrainOptions field a person may set from the command line. The flags
# are read as text (a switch: True) and validated with the config file's values, by TrainOptions.
_TRAIN_FLAGS: dict[str, tuple[str, str]] = {
    "epochs": ("--epochs", "maximum epochs (early stopping may end sooner)"),
    "size": ("--size", "model input HxW, e.g. 64x64 (divisible by 2**len(filters))"),
    "channels": ("--channels", "1 (gray) or 3 (BGR colour)"),
    "architecture": ("--architecture", "seed (the seeds' dense-latent ConvAE, default) or conv (fully "
                     "convolutional, spatial code: for textures and surfaces)"),
    "filters": ("--filters", "conv filters per block, e.g. 32,64 (default: seed 32,64; conv 32,64,128)"),
    "latent": ("--latent", "seed architecture: size of the dense latent code"),
    "code_channels": ("--code-channels", "conv architecture: channels of the spatial code"),
    "loss": ("--loss", "training loss: mse (default), ssim or mse+ssim"),
    "flip": ("--flip", "augment with left-right mirrored images (textures, symmetric parts)"),
    "batch_size": ("--batch-size", "training batch size"),
    "learning_rate": ("--learning-rate", "Adam learning rate"),
    "validation_split": ("--validation-split", "share of the images held out for validation"),
    "patience": ("--patience", "early stopping patience in epochs"),
    "lr_schedule": ("--lr-schedule", "plateau, cosine or constant"),
    "seed": ("--seed", "random seed: a run with the same seed is repeatable on the CPU"),
    "score": ("--score", "anomaly score stored in the bundle (mse, smooth_max, ...)"),
    "quantile": ("--quantile", "threshold quantile of the validation scores"),
    "margin": ("--margin", "threshold = margin x quantile"),
    "scale": ("--scale", "tiled scoring: resize images by this factor in (0, 1] (1: native) to the working "
              "resolution and score them in overlapping tiles; image score = worst tile"),
    "tile": ("--tile", "tiled scoring: tile size HxW, the model input (default 64x64)"),
    "stride": ("--stride", "tiled scoring: pixels between tiles HxW (default half a tile)"),
    "crops": ("--crops", "tiled training: random tile crops per training image per epoch (default 8)"),
    "samples_per_epoch": ("--samples-per-epoch", "train each epoch on a fresh random subset of this many "
                          "images (or tile crops); default all, fewer when a large folder exceeds the budget"),
}
_SWITCHES = {"flip"}


def load_training_section(path: Path) -> tuple[dict[str, Any], str]:
    """The `training:` mapping of a YAML file (or the whole file if it has no such key), and its key prefix."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    prefix = ""
    if isinstance(data, dict) and "training" in data:
        data, prefix = data["training"], "training."
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {prefix.rstrip('.') or '(top level)'}: must be a mapping of option: value")
    return data, prefix


def _config_layer(path: Path | None) -> tuple[dict[str, Any], Callable[[str], str]]:
    """The config file's options (keys with - read as _) and the labels that name them in the file."""
    if path is None:
        return {}, str
    section, prefix = load_training_section(path)
    spelled = {str(key).replace("-", "_"): str(key) for key in section}
    values = {str(key).replace("-", "_"): value for key, value in section.items()}
    return values, lambda name: f"{path}: {prefix}{spelled.get(name, name)}"


def _flag_label(name: str) -> str:
    return _TRAIN_FLAGS[name][0] if name in _TRAIN_FLAGS else "--" + name.replace("_", "-")


def training_options(args: argparse.Namespace) -> TrainOptions:
    """TrainOptions from defaults, then the preset, then the --config file's training: section, then the flags.

    Merged as plain values, validated once; OptionsError (a ValueError) names the file and key or the flag.
    """
    from monitor.training.options import merge_options, preset_settings

    section, in_file = _config_layer(args.config)
    preset, where = (args.preset, "--preset") if args.preset is not None else (section.pop("preset", None), None)
    section.pop("preset", None)  # --preset wins over the file's
    layers = []
    if preset is not None:
        settings = preset_settings(preset, where or in_file("preset"))
        layers.append((settings, lambda name: f"preset {preset}: {name}"))
    flags = {name: getattr(args, name) for name in _TRAIN_FLAGS if getattr(args, name) is not None}
    flags.update({"quiet": True} if args.quiet else {})
    flags.update({"report": False} if args.no_report else {})
    flags.update({"auto": False} if args.no_auto else {})
    flags.update({"allow_degenerate": True} if args.allow_degenerate else {})
    if args.discriminator is not None:
        flags["discriminator"] = args.discriminator
    layers += [(section, in_file), (flags, _flag_label)]
    return merge_options(layers)


def _train(args: argparse.Namespace) -> int:
    try:
        options = training_options(args)
    except (ValueError, TypeError) as exc:
        return fail(str(exc))
    from monitor.model.bundle import BundleError
    from monitor.training.feedback import FeedbackError, read_feedback
    from monitor.training.train import TrainingDataError, train_bundle

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    feedback = old = None
    try:  # feedback and the old bundle are read before training: a typo costs seconds, not a training run
        if args.compare_with and not args.feedback:
            return fail("--compare-with compares on labelled verdicts: give them with --feedback")
        if args.feedback:
            feedback = read_feedback(args.feedback)
        if args.compare_with:
            old = _load(args.compare_with)
        bundle = train_bundle(Path(args.data_dir), Path(args.out), options,
                              progress=None if args.quiet else progress, feedback=feedback)
    except (TrainingDataError, FeedbackError, BundleError) as exc:
        return fail(str(exc))
    tiling = ""
    if bundle.tiling is not None:
        tiling = " tiles at scale {:g}, stride {}x{}".format(bundle.tiling.scale, *bundle.tile_stride)
    print(f"bundle {bundle.path}: {bundle.height}x{bundle.width}x{bundle.channels}{tiling} "
          f"score={bundle.score_label} threshold={bundle.default_threshold:.6g}")
    if feedback is not None:
        _feedback_report(bundle, feedback, old)
    return 0


def _feedback_report(bundle: Any, feedback: Any, old: Any) -> None:
    """Old vs new on every labelled verdict: report/feedback.md and .json in the bundle, the summary printed."""
    from monitor.training.compare import compare_feedback, format_summary, write_feedback_report
    from monitor.training.report import REPORT_DIR

    trained = frozenset(((bundle.meta.get("data") or {}).get("feedback") or {}).get("false_alarms_trained", []))
    comparison = compare_feedback(bundle, feedback, old, trained_on=trained)
    md, _ = write_feedback_report(bundle.path / REPORT_DIR, comparison)
    print(f"feedback on {len(comparison.rows)} labelled verdicts ({md}):")
    print(format_summary(comparison), end="")


def _export_labels(args: argparse.Namespace) -> int:
    from monitor.training.feedback import FeedbackError, export_labels

    try:
        done = export_labels(args.journal, Path(args.out))
    except FeedbackError as exc:
        return fail(str(exc))
    counts = ", ".join(f"{label} {c['with_image']}/{c['labelled']}" for label, c in done.counts.items())
    print(f"exported {done.copied} labelled images to {done.folder} ({counts} with an image); "
          f"{done.missing} without an image (listed in {done.folder / 'labels.jsonl'})")
    return 0


def collect_image_paths(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Files as given plus image files found in folders (recursive, sorted); and the missing paths."""
    from monitor.images import list_images

    found, missing = [], []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            found.extend(list_images(p))
        elif p.is_file():
            found.append(p)
        else:
            missing.append(text)
    return found, missing


def _load(bundle_dir: str) -> Any:
    from monitor.model.bundle import load_bundle

    return load_bundle(bundle_dir)


def _score(args: argparse.Namespace) -> int:
    import numpy as np

    from monitor.images import UnreadableImage, load_image
    from monitor.model.bundle import BundleError
    from monitor.model.scorer import BatchScorer

    paths, missing = collect_image_paths(args.paths)
    for m in missing:
        print(f"error: {m}: no such file or folder", file=sys.stderr)
    try:
        bundle = _load(args.bundle)
    except BundleError as exc:
        return fail(str(exc))
    scorer = BatchScorer(bundle, max_batch=args.batch)
    threshold = bundle.default_threshold
    bad = len(missing)
    for start in range(0, len(paths), args.batch):
        chunk, images = [], []
        for p in paths[start:start + args.batch]:
            try:
                image = load_image(p)
            except UnreadableImage as exc:
                print(f"error: {p}: not a readable image ({exc})", file=sys.stderr)
                bad += 1
                continue
            chunk.append(p)
            images.append(image)
        if not images:
            continue
        # BatchScorer.score, as the daemon; a tiled bundle's large images a few per call (bounded memory).
        scores = np.concatenate([scorer.score(images[part]).scores for part in scorer.call_groups(images)])
        for p, s in zip(chunk, scores, strict=True):
            if not math.isfinite(s):  # no threshold flags NaN: an error, never a "normal"
                print(f"error: {p}: the model gave no finite score ({s})", file=sys.stderr)
                bad += 1
                continue
            anomaly = bool(s > threshold)
            if args.json:
                print(json.dumps({"path": str(p), "score": float(s), "threshold": threshold,
                                  "anomaly": anomaly}))
            else:
                print(f"{s:.6g}\t{'ANOMALY' if anomaly else 'normal'}\t{p}")
        sys.stdout.flush()
    if not paths and not missing:
        return fail("no image files found in the given paths")
    return 2 if bad else 0


def _info(args: argparse.Namespace) -> int:
    from monitor.model.bundle import BundleError
    from monitor.training.info import format_info

    try:
        bundle = _load(args.bundle)
    except BundleError as exc:
        return fail(str(exc))
    if args.json:
        print(json.dumps(bundle.meta, indent=2))
    else:
        print(format_info(bundle))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from monitor.model.bundle import BundleError
    from monitor.training.evaluate import EvaluationError, evaluate_folders, format_evaluation

    try:
        bundle = _load(args.bundle)
        result = evaluate_folders(bundle, Path(args.normal), Path(args.anomaly), max_batch=args.batch,
                                  report_dir=Path(args.report) if args.report else None)
    except (BundleError, EvaluationError) as exc:
        return fail(str(exc))
    print(json.dumps(result.to_json()) if args.json else format_evaluation(result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add train, score, info, evaluate and labels export to the `monitor` command line."""
    p = subparsers.add_parser("train", help="train an autoencoder on a folder of normal images",
                              description="Train on normal images; writes a calibrated model bundle.")
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of normal images (searched recursively)")
    p.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="bundle folder to write")
    p.add_argument("--config", type=Path, metavar="FILE", help="YAML file with a training: section")
    p.add_argument("--preset", metavar="NAME",
                   help="named settings under the config file and the flags: texture (fully convolutional AE, "
                        "SSIM loss, 80 epochs, score smooth_quantile; for textures and surfaces)")
    for name, (flag, help_text) in _TRAIN_FLAGS.items():
        if name in _SWITCHES:  # a switch: absent leaves the config file's value (or the default) alone
            p.add_argument(flag, dest=name, action="store_const", const=True, default=None, help=help_text)
        else:
            p.add_argument(flag, dest=name, default=None, help=help_text)
    p.add_argument("--no-report", action="store_true", help="skip the training report (plots)")
    p.add_argument("--allow-degenerate", action="store_true",
                   help="save a model that fails the health check (logged and recorded) instead of refusing it")
    p.add_argument("--no-auto", action="store_true",
                   help="do not choose settings, architecture and score from the data: the fixed defaults (seed "
                        "architecture, 64x64 gray, mse) for every option not given")
    network = p.add_mutually_exclusive_group()
    network.add_argument("--discriminator", dest="discriminator", action="store_const", const=True, default=None,
                         help="try a defect network trained on synthetic defects with any score, a given one too "
                              "(by default it is tried whenever the score is chosen from the data)")
    network.add_argument("--no-discriminator", dest="discriminator", action="store_const", const=False,
                         help="never join a defect network to the score")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--feedback", action="append", metavar="JOURNAL_OR_EXPORT",
                   help="labelled verdicts (a journal, its rotated files read too, or a `monitor labels export` "
                        "folder; repeatable): images labelled false_alarm join the training images, defect "
                        "labels never do; report/feedback.md compares old and new on every labelled verdict")
    p.add_argument("--compare-with", metavar="OLD_BUNDLE",
                   help="score the labelled verdicts with this bundle too (default: none; the old column is the "
                        "score and threshold the journal recorded)")
    p.set_defaults(func=_train, tensorflow=True)

    p = subparsers.add_parser("labels", help="operator labels: export labelled images for retraining")
    labels_sub = p.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    p = labels_sub.add_parser("export", help="copy labelled images to DIR/<label>/<verdict id><ext> with "
                                             "DIR/labels.jsonl")
    p.add_argument("--journal", required=True, action="append", metavar="JOURNAL",
                   help="the daemon's journal (rotated files beside it are read too); repeatable")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder, or an earlier export to replace")
    p.set_defaults(func=_export_labels)

    p = subparsers.add_parser("score", help="score image files or folders with a bundle")
    p.add_argument("bundle", metavar="BUNDLE_DIR")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders (recursive)")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: {"path", "score", "threshold", "anomaly"}')
    p.add_argument("--batch", type=int, default=32, help="images per forward pass")
    p.set_defaults(func=_score, tensorflow=True)

    p = subparsers.add_parser("info", help="print what a bundle holds")
    p.add_argument("bundle", metavar="BUNDLE_DIR")
    p.add_argument("--json", action="store_true", help="print the whole sidecar as JSON")
    p.set_defaults(func=_info, tensorflow=True)

    p = subparsers.add_parser("evaluate", help="measure detection quality on labelled folders")
    p.add_argument("bundle", metavar="BUNDLE_DIR")
    p.add_argument("--normal", required=True, metavar="DIR", help="folder of good parts")
    p.add_argument("--anomaly", required=True, metavar="DIR", help="folder of defective parts")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", metavar="DIR", help="write plots and worst-case evidence images here")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass")
    p.set_defaults(func=_evaluate, tensorflow=True)
