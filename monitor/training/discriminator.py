"""A score that learns what a defect looks like on this surface: a small network trained on synthetic defects.

An autoencoder and a Gaussian of normal features only know what normal looks like, and on a busy texture
(gravel, brick) a crack, a hole or foreign material is about as far from the Gaussian as normal variation is.
A discriminative network trained to segment the synthetic defects of monitor/training/defects.py on the
training images learns which local changes of *this* surface are defects, as DRAEM's discriminative half
(Zavrtanik et al. 2021) and CutPaste (Li et al. 2021) do; it is trained from scratch, since no pretrained
weights can be fetched.

It is trained on the structural families (cutpaste, blur, line, speck), never on HELD_OUT (noise and smooth
stains). Whether it joins the bundle's score is judged on held-out normal images and on defects of the
held-out families only, which it never saw: it joins when the combined score detects those at least as well
as the score without it, so a network that raises false alarms on normal images, and so buries faint stains
under a higher threshold, stays out.

The network: six 3x3 convolutions (two of stride 2, two dilated), BatchNorm, LeakyReLU, and a 1x1 convolution
to one logit per 4x4 cell; fully convolutional, so it takes any input size. The target of a cell is whether
any pixel of it was changed, so a 1-px line is a whole cell to find.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from monitor.training.defects import FAMILIES, make_defect
from monitor.training.health import recalibrate_batchnorm

log = logging.getLogger(__name__)

DISCRIMINATOR_FILE = "discriminator.keras"
STRIDE = 4  # input pixels per output cell, each way
# Never trained on: what the decision to use it is judged on. It learns structural defects (material from
# elsewhere, smears, scratches, specks); smooth stains and noise it never sees are where a network that raises
# false alarms would cost detection, since a faint stain is found only above the normal images' tail.
HELD_OUT: tuple[str, ...] = ("noise", "blob_brightness", "blob_colour")
TRAINED_ON: tuple[str, ...] = tuple(f for f in FAMILIES if f not in HELD_OUT)
# Training inputs (64x64-sized; larger inputs count by their area) at most: about 2 minutes on 2 CPU cores.
MAX_SAMPLES = 32_000
POOL = 2_000  # inputs given defects at once: a fresh pool each round, bounded memory
BATCH = 32
RECALIBRATE_SAMPLES = 1_024  # 64x64 inputs' worth the BatchNorm statistics are measured on after training
DEFECT_SHARE = 0.5  # of the inputs, the rest stay normal so that normal texture is learnt as normal

Progress = Callable[[str], None]


def build_discriminator(channels: int) -> Any:
    """The network: N x H x W x channels in [0, 1] -> N x ceil(H/4) x ceil(W/4) x 1 defect logits."""
    import keras
    from keras import layers

    x = inputs = keras.Input((None, None, channels), name="disc_input")
    for i, (filters, strides, dilation) in enumerate(((16, 1, 1), (32, 2, 1), (32, 1, 1), (64, 2, 1), (64, 1, 2),
                                                      (64, 1, 4))):
        x = layers.Conv2D(filters, 3, strides=strides, dilation_rate=dilation, padding="same", use_bias=False,
                          name=f"disc_conv{i}")(x)
        # momentum 0.9: the moving statistics settle within a few dozen steps, not a few hundred
        x = layers.BatchNormalization(momentum=0.9, name=f"disc_bn{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"disc_act{i}")(x)
    logits = layers.Conv2D(1, 1, name="disc_logits")(x)
    return keras.Model(inputs, logits, name="discriminator")


def cell_targets(masks: np.ndarray) -> np.ndarray:
    """N x H x W bool defect masks -> N x ceil(H/4) x ceil(W/4) x 1 float: 1 where any pixel of a cell changed."""
    n, h, w = masks.shape
    ph, pw = -h % STRIDE, -w % STRIDE
    padded = np.pad(masks, ((0, 0), (0, ph), (0, pw)))
    cells = padded.reshape(n, (h + ph) // STRIDE, STRIDE, (w + pw) // STRIDE, STRIDE).any(axis=(2, 4))
    return cells[..., None].astype(np.float32)


def defect_pairs(inputs: np.ndarray, rng: np.random.Generator, min_px: int,
                 families: tuple[str, ...] = TRAINED_ON) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, cell targets): a DEFECT_SHARE of `inputs` (N x H x W x C in [0, 1]) given a synthetic defect of
    `families` (donors: the other inputs), the rest left normal with empty targets."""
    x = np.array(inputs, np.float32, copy=True)
    masks = np.zeros(x.shape[:3], bool)
    chosen = [f for f in families if x.shape[-1] == 3 or f != "blob_colour"] or list(families)
    for i in np.flatnonzero(rng.random(len(x)) < DEFECT_SHARE):
        donor = x[int(rng.integers(len(x)))]
        defect = make_defect(x[i], rng, chosen[int(rng.integers(len(chosen)))], donor, min_px)
        if defect.family in families:  # not the brightness blob a family that cannot show falls back to
            x[i], masks[i] = defect.image, defect.mask
    return x, cell_targets(masks)


def training_samples(input_area: int, autoencoder_samples: int) -> int:
    """How many inputs the network trains on: as many as the autoencoder did, at most MAX_SAMPLES 64x64 inputs'
    worth of pixels."""
    return int(max(BATCH, min(autoencoder_samples, MAX_SAMPLES * 64 * 64 // max(1, input_area))))


def train_discriminator(draw: Callable[[np.random.Generator], np.ndarray], samples: int, rng: np.random.Generator,
                        min_px: int, progress: Progress | None = None) -> Any:
    """A trained network. `draw(rng)` gives normal training inputs (N x H x W x C in [0, 1]): the images, or a
    fresh set of tile crops; `samples`: inputs to train on in all."""
    import keras

    first = draw(rng)
    model = build_discriminator(int(first.shape[-1]))
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True))
    done, rounds, start = 0, 0, time.monotonic()
    pool = first
    while done < samples:
        if rounds:
            pool = draw(rng)
        take = min(POOL, samples - done)
        pick = rng.choice(len(pool), take, replace=take > len(pool))  # a small folder is drawn more than once
        x, y = defect_pairs(pool[pick], rng, min_px)
        order = rng.permutation(len(x))
        history = model.fit(x[order], y[order], batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
        done, rounds = done + take, rounds + 1
        loss = float(history.history["loss"][-1])
        log.info("discriminator_round round=%d samples=%d of=%d loss=%.4f seconds=%.1f", rounds, done, samples,
                 loss, time.monotonic() - start)
        if progress:
            progress(f"defect network: {done} of {samples} inputs, loss {loss:.4f}")
    # Precise BN: the moving statistics trail the weights, and this network's first layers see variances of
    # 1e-4, so a small lag moved every logit: on held-out crops of the 256-px part protocol 89% of normal cells
    # read "defect" and the cells' AUROC was 0.59; set to the statistics of inputs as trained (half with
    # defects), 0.98.
    pool = draw(rng)
    take = max(BATCH, min(len(pool), RECALIBRATE_SAMPLES * 64 * 64 // max(1, pool.shape[1] * pool.shape[2])))
    x, _ = defect_pairs(pool[rng.choice(len(pool), take, replace=take > len(pool))], rng, min_px)
    recalibrate_batchnorm(model, x, sample=len(x))
    return model


def discriminator_maps(model: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """N x h x w defect logits of inputs x (N x H x W x C in [0, 1]), one per 4x4 cell."""
    import tensorflow as tf

    out = [model(tf.constant(np.asarray(x[i:i + batch], np.float32)), training=False).numpy()[..., 0]
           for i in range(0, len(x), batch)]
    return np.concatenate(out)


def decision_of(training: dict[str, Any]) -> dict[str, Any] | None:
    """The record of the decision in a sidecar's `training` section: under `selection` when the score was
    chosen from the data, else beside it; None when no network was tried."""
    return (training.get("selection") or {}).get("discriminator") or training.get("discriminator")


def _maxima(maps: np.ndarray | list[np.ndarray]) -> np.ndarray:
    return np.array([float(np.max(m)) for m in maps], np.float64)


def _scored_inputs(bundle: Any, network: Any, sets: dict[str, list[np.ndarray]],
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[np.ndarray]]:
    """(each set's scores under `bundle`, model inputs as the forward pass scores them; the maxima of the
    network's maps resized to the score's map, unnormalised; the normal inputs' score maps)."""
    import tensorflow as tf

    from monitor.model.density import resized_map
    from monitor.model.scorer import BatchScorer

    scorer = BatchScorer(bundle, max_batch=min(64, max(1, len(sets["normal"]))))
    scored = {k: scorer.score_inputs(np.stack(x)) for k, x in sets.items()}
    size = tuple(np.shape(scored["normal"].error_maps[0]))
    found = {k: _maxima(resized_map(tf.constant(discriminator_maps(network, np.stack(x))), size, (0.0, 1.0)).numpy())
             for k, x in sets.items()}
    return ({k: np.asarray(v.scores, np.float64) for k, v in scored.items()}, found,
            list(scored["normal"].error_maps))


def _scored_whole(bundle: Any, network: Any, sets: dict[str, list[np.ndarray]],
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], None]:
    """As _scored_inputs, for whole decoded images through the tiled scorer, the network on each whole working
    image (a bundle with a whole-image density: its maps are normalised already, so none are kept). A call
    group at a time: a 2 MP image's working image, maps and reconstruction are megabytes each."""
    from monitor.model.scorer import BatchScorer, image_defect_maps

    scorer = BatchScorer(bundle, max_batch=32)
    scores: dict[str, np.ndarray] = {}
    found: dict[str, np.ndarray] = {}
    for k, images in sets.items():
        parts = [scorer.score(images[g]) for g in scorer.call_groups(images)]
        scores[k] = np.concatenate([p.scores for p in parts]).astype(np.float64)
        found[k] = np.concatenate([_maxima(image_defect_maps(network, list(p.inputs), (0.0, 1.0))) for p in parts])
    return scores, found, None


def judge(bundle: Any, network: Any, normal: np.ndarray | list[np.ndarray], min_px: int, rng: np.random.Generator,
          n_defects: int, quantile: float, tie: float) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the sidecar's `discriminator` section, or None when it stays out; the record of the decision).

    Scored as the daemon scores `bundle` (its combined map), on held-out normal inputs and on synthetic defects
    made from them: of the HELD_OUT families, which decide, and of every family, which are reported. With a
    whole-image density (`on: image`) `normal` holds whole decoded images, scored whole through the tiled
    scorer, and the network runs on each whole working image, as the daemon will run it.
    """
    from monitor.model.density import normaliser
    from monitor.model.scores import MAX_SCORES
    from monitor.training.defects import defect_set
    from monitor.training.quality import auroc

    density = bundle.sidecar.density
    whole = bundle.sidecar.whole_image_density
    # a family that cannot show on an image falls back to a brightness blob (defects.py), which it has seen
    unseen = [d for d in defect_set(list(normal), n_defects, rng, families=HELD_OUT, min_size_px=min_px)
              if d.family in HELD_OUT]
    if not unseen:
        return None, {"used": False, "why": f"none of {', '.join(HELD_OUT)} shows on these images"}
    every = defect_set(list(normal), n_defects, rng, min_size_px=min_px)
    sets = {"normal": list(normal), "unseen": [d.image for d in unseen], "every": [d.image for d in every]}
    without, found, normal_maps = (_scored_whole if whole else _scored_inputs)(bundle, network, sets)
    norm = normaliser(found["normal"])
    base_norm = None if density is not None else normaliser(without["normal"])
    map_norm = None
    if density is None and bundle.sidecar.score.name not in MAX_SCORES:
        map_norm = normaliser(_maxima(normal_maps))
    joined = {k: np.maximum(v if base_norm is None else (v - base_norm[0]) / base_norm[1],
                            (found[k] - norm[0]) / norm[1]) for k, v in without.items()}

    def figures(scores: dict[str, np.ndarray], which: str, families: list[str]) -> dict[str, Any]:
        normal, defect = scores["normal"], scores[which]
        labels = np.r_[np.zeros(len(normal)), np.ones(len(defect))]
        hit = defect > np.quantile(normal, quantile)
        return {"auroc": auroc(np.r_[normal, defect], labels), "detection_rate": float(hit.mean()),
                "per_family": {f: float(hit[np.asarray(families) == f].mean()) for f in sorted(set(families))}}

    unseen_families, every_families = [d.family for d in unseen], [d.family for d in every]
    record = {
        "trained_on": list(TRAINED_ON), "judged_on": list(HELD_OUT), "normal_inputs": len(sets["normal"]),
        "whole_images": whole, "unseen_defects": len(unseen), "defects": int(n_defects),
        "without": {"unseen": figures(without, "unseen", unseen_families),
                    "every": figures(without, "every", every_families)},
        "with": {"unseen": figures(joined, "unseen", unseen_families),
                 "every": figures(joined, "every", every_families)},
        "rule": f"joins when its AUROC on defects of families it never saw ({', '.join(HELD_OUT)}) is at least "
                f"that of the score without it, less {tie}",
    }
    used = record["with"]["unseen"]["auroc"] >= record["without"]["unseen"]["auroc"] - tie
    record["used"] = bool(used)
    if not used:
        return None, record
    section = {"file": DISCRIMINATOR_FILE, "offset": norm[0], "scale": norm[1],
               "base_offset": base_norm[0] if base_norm else 0.0, "base_scale": base_norm[1] if base_norm else None,
               "map_offset": map_norm[0] if map_norm else 0.0, "map_scale": map_norm[1] if map_norm else None}
    return section, record
