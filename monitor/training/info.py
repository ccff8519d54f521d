"""`monitor info`: a bundle's sidecar as a page a person reads."""

from __future__ import annotations

import numpy as np

from monitor.model.bundle import Bundle
from monitor.training.discriminator import decision_of


def _tiling(bundle: Bundle) -> str:
    if bundle.tiling is None:
        return f"none (each image is resized whole to {bundle.height}x{bundle.width})"
    sh, sw = bundle.tile_stride
    return (f"images resized by scale {bundle.tiling.scale:g} to the working resolution, scored in "
            f"{bundle.height}x{bundle.width} tiles at stride {sh}x{sw}; image score = worst tile")


def _density(bundle: Bundle) -> str:
    density = bundle.sidecar.density
    if density is None:
        return ""
    what = f"a {density.mode} density of {density.features} features"
    if density.on == "image" and density.image_size is not None:
        what += " of the whole working image (resized to {}x{}), joined after the tiles are stitched".format(
            *density.image_size)
    how = (f"density map (offset {density.density_offset:.4g}, scale {density.density_scale:.4g}); "
           "image score = its maximum")
    if density.residual_norm is None:
        return f" not used for the score: the score is {what} alone, the normalised {how})"
    return (f", combined with {what} (each map as (map - offset) / scale: residual offset "
            f"{density.residual_offset:.4g}, scale {density.residual_scale:.4g}; {how} of the two)")


def _discriminator(bundle: Bundle) -> str:
    network = bundle.sidecar.discriminator
    if network is None:
        return ""
    base = ("already normalised" if network.base_norm is None else
            f"normalised with offset {network.base_offset:.4g}, scale {network.base_scale:.4g}")
    where = " of the whole working image" if bundle.sidecar.whole_image_density else ""
    return (f"; joined by a defect network ({network.file}: logits per 4x4 cell{where}, offset {network.offset:.4g}, "
            f"scale {network.scale:.4g}; the score without it {base}): image score = the larger of the two")


def _network_decision(decision: dict) -> str:
    if "why" in decision:
        return f"network     not tried: {decision['why']}"
    without, with_ = decision["without"]["unseen"], decision["with"]["unseen"]
    return (f"network     {'joined' if decision['used'] else 'left out'}: trained {decision.get('seconds')} s on "
            f"{decision.get('samples')} inputs with synthetic {', '.join(decision['trained_on'])}; on "
            f"{', '.join(decision['judged_on'])} (never seen) AUROC {without['auroc']:.4f} without, "
            f"{with_['auroc']:.4f} with it, detection {without['detection_rate']:.0%} -> "
            f"{with_['detection_rate']:.0%}")


def _choices(training: dict) -> list[str]:
    """What `monitor train` chose from the data, and why; the score chosen on synthetic defects."""
    lines = []
    auto = training.get("auto") or {}
    for key, reason in (auto.get("reasons") or {}).items():
        if key in (auto.get("applied") or auto.get("settings") or {}):
            lines.append(f"chosen      {key}: {reason}")
    selection = training.get("selection")
    if selection:
        rates = ", ".join(f"{k} {v:.0%}" for k, v in selection.get("per_family", {}).items())
        lines.append(f"selection   {selection['chosen']} of {len(selection.get('trials', []))} candidates: AUROC "
                     f"{selection['auroc']:.4f} on {selection['normal_inputs']} held-out normal inputs vs "
                     f"{selection['synthetic_defects']} synthetic defects; expected detection rate "
                     f"{selection['expected_detection_rate']:.0%} ({rates})")
    decision = decision_of(training)
    if decision:
        lines.append(_network_decision(decision))
    health = training.get("health")
    if health:
        lines.append("health      " + ("ok" if health.get("ok") else "; ".join(health.get("problems", []))))
    return lines


def format_info(bundle: Bundle) -> str:
    """Human-readable summary of a bundle: input, score, threshold, training, data, versions."""
    m = bundle.meta
    cal = bundle.calibration_scores
    thr = m.get("threshold", {})
    lines = [
        f"bundle      {bundle.path}",
        f"input       {bundle.height}x{bundle.width}x{bundle.channels} "
        f"({m.get('input', {}).get('color_order', '?')}, float32 in [0, 1])"
        + (f", 16-bit images read as {bundle.uint16_white.bit_length()}-bit: {bundle.uint16_white} is white"
           if bundle.uint16_white else ""),
        f"preprocess  {', '.join(f'{k}={v}' for k, v in (m.get('preprocessing') or {}).items())}",
        f"tiling      {_tiling(bundle)}",
        f"score       {bundle.score_name} {bundle.score_params or ''}".rstrip() + _density(bundle)
        + _discriminator(bundle),
        f"threshold   {bundle.default_threshold:.6g} = margin {bundle.threshold_margin} x quantile "
        f"{bundle.threshold_quantile} of {len(cal)} calibration scores"
        + (f" ({thr['method']})" if thr.get("method") else ""),
        f"calibration {m.get('calibration', {}).get('source', '?')}: min {cal.min():.6g}, median "
        f"{np.median(cal):.6g}, max {cal.max():.6g}",
    ]
    arch = m.get("architecture")
    if arch:
        code = (f"code_channels={arch['code_channels']}" if "code_channels" in arch
                else f"latent={arch.get('latent')}")
        lines.append(f"model       {arch.get('name', '?')} filters={arch.get('filters')} {code} "
                     f"loss={arch.get('loss', 'mse')} parameters={arch.get('parameters')}")
    tr = m.get("training")
    if tr:
        opts = tr.get("options", {})
        lines.append(f"training    {tr.get('epochs_run')} epochs (best {tr.get('best_epoch')}), "
                     f"{tr.get('train_images')} train / {tr.get('validation_images')} validation images, "
                     f"{tr.get('seconds')} s, finished {tr.get('finished_at')}")
        lines.append("options     " + ", ".join(f"{k}={v}" for k, v in opts.items()))
        hist = tr.get("history", {})
        if hist.get("loss"):
            best = min(hist.get("val_loss", [np.nan]))
            lines.append(f"loss        final {hist['loss'][-1]:.6g}, best val_loss {best:.6g}")
        lines.extend(_choices(tr))
    data = m.get("data")
    if data:
        lines.append("data        " + ", ".join(f"{k}={v}" for k, v in data.items()))
    versions = m.get("versions")
    if versions:
        lines.append("versions    " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "\n".join(lines)
