"""`monitor info`: a bundle's sidecar as a page a person reads."""

from __future__ import annotations

import numpy as np

from monitor.model.bundle import Bundle


def format_info(bundle: Bundle) -> str:
    """Human-readable summary of a bundle: input, score, threshold, training, data, versions."""
    m = bundle.meta
    cal = bundle.calibration_scores
    thr = m.get("threshold", {})
    lines = [
        f"bundle      {bundle.path}",
        f"input       {bundle.height}x{bundle.width}x{bundle.channels} "
        f"({m.get('input', {}).get('color_order', '?')}, float32 in [0, 1])",
        f"preprocess  {', '.join(f'{k}={v}' for k, v in m.get('preprocessing', {}).items())}",
        f"score       {bundle.score_name} {bundle.score_params or ''}".rstrip(),
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
    data = m.get("data")
    if data:
        lines.append("data        " + ", ".join(f"{k}={v}" for k, v in data.items()))
    versions = m.get("versions")
    if versions:
        lines.append("versions    " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "\n".join(lines)
