"""Helpers for the reload and model-per-source tests: bundle variants, streaming files, metrics scrapes."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml
from imagegen import normal_image, write_images


def bundle_variant(src: Path, dst: Path, margin: float | None = None, corrupt_model: bool = False) -> Path:
    """A copy of bundle `src`: same model, another identity (its sidecar rewritten), optionally another
    threshold margin (so its verdicts show which model judged them) or a truncated model file."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    if margin is not None:
        old = meta["threshold"].get("margin", 1.0)
        meta["threshold"]["margin"] = margin
        if "value" in meta["threshold"]:
            meta["threshold"]["value"] *= margin / old
    (dst / "bundle.json").write_text(json.dumps(meta, indent=1) + "\n")  # other bytes: another identity
    if corrupt_model:
        model = dst / meta.get("model_file", "model.keras")
        model.write_bytes(model.read_bytes()[:100])
    return dst


def rewrite_config(path: Path, config: dict) -> None:
    """Replace the config file atomically, as an operator's editor or deploy tool does."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, path)


class Streamer:
    """Renames `n` new images into `inbox` one every `interval` s from a thread; `names` lists them."""

    def __init__(self, inbox: Path, n: int, prefix: str, interval: float = 0.03, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        staging = inbox.parent / f"staging-{prefix}"
        self.paths = write_images(staging, [normal_image(rng) for _ in range(n)], prefix=prefix)
        self.inbox = inbox
        self.interval = interval
        self.moved = 0
        self._thread = threading.Thread(target=self._run, name=f"streamer-{prefix}", daemon=True)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.paths]

    def start(self) -> Streamer:
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        for path in self.paths:
            os.replace(path, self.inbox / path.name)
            self.moved += 1
            time.sleep(self.interval)

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series of a scrape; KeyError when it is not there."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    raise KeyError(f"{name} {labels} not in the scrape")


def drop_one(inbox: Path, name: str, seed: int = 1) -> None:
    """One normal image renamed into `inbox` (complete when it appears)."""
    staging = inbox.parent / "staging-one"
    (path,) = write_images(staging, [normal_image(np.random.default_rng(seed))], prefix=name)
    inbox.mkdir(parents=True, exist_ok=True)
    os.replace(path, inbox / path.name)
