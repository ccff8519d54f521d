"""The model's subcommands: train, score, info, evaluate (registered into `monitor`'s parser)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

# Heavy imports (TensorFlow) happen inside the handlers, so `monitor --help` stays instant.


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("*", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW or N, e.g. 64x64, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"size must be HxW or N with positive numbers, got {text!r}")
    return parts[0], parts[1]


def _parse_filters(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"filters must be numbers separated by commas, got {text!r}") \
            from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"filters must be positive numbers, got {text!r}")
    return values


# option name -> (flag, type or None for a switch, help); every TrainOptions field a person may set from
# the command line.
_TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "epochs": ("--epochs", int, "maximum epochs (early stopping may end sooner)"),
    "size": ("--size", _parse_size, "model input HxW, e.g. 64x64 (divisible by 2**len(filters))"),
    "channels": ("--channels", int, "1 (gray) or 3 (BGR colour)"),
    "architecture": ("--architecture", str, "seed (the seeds' dense-latent ConvAE, default) or conv (fully "
                     "convolutional, spatial code: for textures and surfaces)"),
    "filters": ("--filters", _parse_filters, "conv filters per block, e.g. 32,64 (default: seed 32,64; "
                "conv 32,64,128)"),
    "latent": ("--latent", int, "seed architecture: size of the dense latent code"),
    "code_channels": ("--code-channels", int, "conv architecture: channels of the spatial code"),
    "loss": ("--loss", str, "training loss: mse (default), ssim or mse+ssim"),
    "flip": ("--flip", None, "augment with left-right mirrored images (textures, symmetric parts)"),
    "batch_size": ("--batch-size", int, "training batch size"),
    "learning_rate": ("--learning-rate", float, "Adam learning rate"),
    "validation_split": ("--validation-split", float, "share of the images held out for validation"),
    "patience": ("--patience", int, "early stopping patience in epochs"),
    "lr_schedule": ("--lr-schedule", str, "plateau, cosine or constant"),
    "seed": ("--seed", int, "random seed: a run with the same seed is repeatable on the CPU"),
    "score": ("--score", str, "anomaly score stored in the bundle (mse, smooth_max, ...)"),
    "quantile": ("--quantile", float, "threshold quantile of the validation scores"),
    "margin": ("--margin", float, "threshold = margin x quantile"),
}


def load_training_section(path: Path) -> dict[str, Any]:
    """The `training:` mapping of a YAML file (or the whole file if it has no such key)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict) and "training" in data:
        data = data["training"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: training: must be a mapping of option: value")
    return data


def training_options(args: argparse.Namespace) -> Any:
    """TrainOptions from defaults, then the preset, then the --config file's training: section, then the flags."""
    from monitor.model.train import PRESETS, TrainOptions

    values: dict[str, Any] = {}
    known = {f.name for f in fields(TrainOptions)}
    section = load_training_section(args.config) if args.config is not None else {}
    preset = args.preset if args.preset is not None else section.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        values.update({k: dict(v) if isinstance(v, dict) else v for k, v in PRESETS[preset].items()})
    if args.config is not None:
        for key, value in section.items():
            if key == "preset":
                continue
            name = str(key).replace("-", "_")
            if name not in known or name == "quiet":
                raise ValueError(f"{args.config}: training.{key}: unknown key "
                                 f"(known: {', '.join(sorted(known - {'quiet'}))})")
            if name == "size":
                value = _parse_size(str(value)) if not isinstance(value, list) else tuple(value)
            elif name == "filters":
                value = _parse_filters(str(value)) if not isinstance(value, list) else tuple(value)
            elif name in ("learning_rate", "validation_split", "quantile", "margin",
                          "max_unreadable_fraction"):
                try:
                    value = float(value)  # YAML reads 1e-3 (no dot) as a string
                except (TypeError, ValueError):
                    raise ValueError(f"{args.config}: training.{key}: not a number: {value!r}") from None
            values[name] = value
    for name in _TRAIN_FLAGS:
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    values["quiet"] = args.quiet
    values["report"] = not args.no_report
    options = TrainOptions(**values)
    options.validate()
    return options


def _train(args: argparse.Namespace) -> int:
    try:
        options = training_options(args)
    except (ValueError, TypeError) as exc:
        return _err(str(exc))
    from monitor.model.train import TrainingDataError, train_bundle

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        bundle = train_bundle(Path(args.data_dir), Path(args.out), options,
                              progress=None if args.quiet else progress)
    except TrainingDataError as exc:
        return _err(str(exc))
    print(f"bundle {bundle.path}: {bundle.height}x{bundle.width}x{bundle.channels} score={bundle.score_name} "
          f"threshold={bundle.default_threshold:.6g}")
    return 0


def collect_image_paths(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Files as given plus image files found in folders (recursive, sorted); and the missing paths."""
    from monitor.model.train import list_images

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
    from monitor.model.bundle import BundleError
    from monitor.model.scorer import BatchScorer
    from monitor.model.train import read_image

    paths, missing = collect_image_paths(args.paths)
    for m in missing:
        print(f"error: {m}: no such file or folder", file=sys.stderr)
    try:
        bundle = _load(args.bundle)
    except BundleError as exc:
        return _err(str(exc))
    scorer = BatchScorer(bundle, max_batch=args.batch)
    threshold = bundle.default_threshold
    bad = len(missing)
    for start in range(0, len(paths), args.batch):
        chunk, images = [], []
        for p in paths[start:start + args.batch]:
            image = read_image(p)
            if image is None:
                print(f"error: {p}: not a readable image", file=sys.stderr)
                bad += 1
                continue
            chunk.append(p)
            images.append(image)
        if not images:
            continue
        for p, s in zip(chunk, scorer.score(images).scores, strict=True):
            anomaly = bool(s > threshold)
            if args.json:
                print(json.dumps({"path": str(p), "score": float(s), "threshold": threshold,
                                  "anomaly": anomaly}))
            else:
                print(f"{s:.6g}\t{'ANOMALY' if anomaly else 'normal'}\t{p}")
        sys.stdout.flush()
    if not paths and not missing:
        return _err("no image files found in the given paths")
    return 2 if bad else 0


def _info(args: argparse.Namespace) -> int:
    from monitor.model.bundle import BundleError
    from monitor.model.info import format_info

    try:
        bundle = _load(args.bundle)
    except BundleError as exc:
        return _err(str(exc))
    if args.json:
        print(json.dumps(bundle.meta, indent=2))
    else:
        print(format_info(bundle))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from monitor.model.bundle import BundleError
    from monitor.model.evaluate import EvaluationError, evaluate_folders, format_evaluation

    try:
        bundle = _load(args.bundle)
        result = evaluate_folders(bundle, Path(args.normal), Path(args.anomaly), max_batch=args.batch,
                                  report_dir=Path(args.report) if args.report else None)
    except (BundleError, EvaluationError) as exc:
        return _err(str(exc))
    print(json.dumps(result.to_json()) if args.json else format_evaluation(result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add train, score, info and evaluate to the `monitor` command line."""
    p = subparsers.add_parser("train", help="train an autoencoder on a folder of normal images",
                              description="Train on normal images; writes a calibrated model bundle.")
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of normal images (searched recursively)")
    p.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="bundle folder to write")
    p.add_argument("--config", type=Path, metavar="FILE", help="YAML file with a training: section")
    p.add_argument("--preset", metavar="NAME",
                   help="named settings under the config file and the flags: texture (fully convolutional AE, "
                        "SSIM loss, 80 epochs, score smooth_quantile; for textures and surfaces)")
    for name, (flag, typ, help_text) in _TRAIN_FLAGS.items():
        if typ is None:  # a switch: absent leaves the config file's value (or the default) alone
            p.add_argument(flag, dest=name, action="store_const", const=True, default=None, help=help_text)
        else:
            p.add_argument(flag, dest=name, type=typ, default=None, help=help_text)
    p.add_argument("--no-report", action="store_true", help="skip the training report (plots)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("score", help="score image files or folders with a bundle")
    p.add_argument("bundle", metavar="BUNDLE_DIR")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders (recursive)")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: {"path", "score", "threshold", "anomaly"}')
    p.add_argument("--batch", type=int, default=32, help="images per forward pass")
    p.set_defaults(func=_score)

    p = subparsers.add_parser("info", help="print what a bundle holds")
    p.add_argument("bundle", metavar="BUNDLE_DIR")
    p.add_argument("--json", action="store_true", help="print the whole sidecar as JSON")
    p.set_defaults(func=_info)

    p = subparsers.add_parser("evaluate", help="measure detection quality on labelled folders")
    p.add_argument("bundle", metavar="BUNDLE_DIR")
    p.add_argument("--normal", required=True, metavar="DIR", help="folder of good parts")
    p.add_argument("--anomaly", required=True, metavar="DIR", help="folder of defective parts")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", metavar="DIR", help="write plots and worst-case evidence images here")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass")
    p.set_defaults(func=_evaluate)
