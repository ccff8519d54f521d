"""The batched scorer: padding never changes a score; outputs have the documented shapes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imagegen import anomalous_image, normal_image

from monitor.model.bundle import load_bundle
from monitor.model.scorer import BatchScorer

MAX_BATCH = 4


@pytest.fixture(scope="module")
def scorer(tiny_bundle: Path) -> BatchScorer:
    return BatchScorer(load_bundle(tiny_bundle), max_batch=MAX_BATCH)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [normal_image(rng, 32) if i % 3 else anomalous_image(rng, 32) for i in range(11)]


@pytest.fixture(scope="module")
def one_by_one(scorer: BatchScorer, images: list[np.ndarray]) -> np.ndarray:
    return np.array([scorer.score([im]).scores[0] for im in images])


def test_full_batch_scores_equal_one_by_one(scorer, images, one_by_one) -> None:  # noqa: ANN001
    np.testing.assert_allclose(scorer.score(images[:MAX_BATCH]).scores, one_by_one[:MAX_BATCH], rtol=1e-5)


def test_more_than_max_batch_is_split_with_the_same_scores(scorer, images, one_by_one) -> None:  # noqa: ANN001
    np.testing.assert_allclose(scorer.score(images).scores, one_by_one, rtol=1e-5)


def test_outputs_have_the_documented_shapes_and_types(scorer, images) -> None:  # noqa: ANN001
    out = scorer.score(images[:5])
    assert out.inputs.shape == out.reconstructions.shape == (5, 32, 32, 1)
    assert out.error_maps.shape == (5, 32, 32) and out.error_maps.dtype == np.float32
    assert out.scores.shape == (5,) and out.scores.dtype == np.float64
    assert out.reconstructions.min() >= 0.0 and out.reconstructions.max() <= 1.0


def test_mse_score_is_the_mean_of_its_error_map(scorer, images) -> None:  # noqa: ANN001
    out = scorer.score(images[:3])
    np.testing.assert_allclose(out.scores, out.error_maps.mean(axis=(1, 2)), rtol=1e-4)
    direct = ((out.inputs - out.reconstructions) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(out.scores, direct, rtol=1e-4)


def test_colour_and_other_sizes_are_converted_before_scoring(scorer, images) -> None:  # noqa: ANN001
    import cv2

    big = cv2.resize(images[1], (64, 64), interpolation=cv2.INTER_NEAREST)
    big_bgr = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
    s = scorer.score([big_bgr, images[1]]).scores
    assert s[0] == pytest.approx(s[1], rel=0.05)


def test_empty_list_gives_empty_batch(scorer) -> None:  # noqa: ANN001
    assert len(scorer.score([])) == 0


def test_each_batch_size_bucket_is_traced_once(scorer, images) -> None:  # noqa: ANN001
    for _ in range(2):
        for n in range(1, len(images) + 1):
            scorer.score(images[:n])
    assert set(scorer._forwards) <= set(scorer.buckets)
    assert all(f.experimental_get_tracing_count() == 1 for f in scorer._forwards.values())


def test_the_buckets_grow_by_four_up_to_max_batch() -> None:
    from monitor.model.scorer import batch_buckets

    assert batch_buckets(32) == (1, 4, 16, 32)
    assert batch_buckets(16) == (1, 4, 16)
    assert batch_buckets(1) == (1,)
    assert batch_buckets(100) == (1, 4, 16, 64, 100)


def test_a_chunk_scores_the_same_whatever_bucket_pads_it(scorer, images) -> None:  # noqa: ANN001
    alone = np.array([scorer.score([im]).scores[0] for im in images])
    together = scorer.score(images).scores
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-7)


def test_scorers_traced_one_after_another_raise_no_retracing_warning(tiny_bundle, images, caplog) -> None:  # noqa: ANN001
    # Training calibrates each candidate through a scorer of its own, and each scorer traces one function per
    # batch bucket on purpose: TensorFlow's "triggered tf.function retracing" warning about them is noise.
    caplog.set_level(logging.WARNING, logger="tensorflow")
    bundle = load_bundle(tiny_bundle)
    for k in range(1, 9):
        BatchScorer(bundle, max_batch=4).score(images[:k % 4 + 1])
    assert "retracing" not in caplog.text


def test_while_the_small_buckets_warm_elsewhere_a_chunk_pads_to_a_warm_one(tiny_bundle, images, one_by_one) -> None:  # noqa: ANN001
    from monitor.modelset import warm

    bundle = load_bundle(tiny_bundle)
    fresh = BatchScorer(bundle, max_batch=MAX_BATCH)
    warm(fresh, bundle, all_buckets=False)  # max_batch alone; the daemon warms the rest on a thread
    assert fresh.warming and set(fresh._forwards) == {MAX_BATCH}
    np.testing.assert_allclose(fresh.score(images[:1]).scores, one_by_one[:1], rtol=1e-5)
    assert set(fresh._forwards) == {MAX_BATCH}  # padded to max_batch: no trace on the scoring thread


def test_warm_rest_warms_every_bucket_and_ends_the_warming(tiny_bundle, images, one_by_one) -> None:  # noqa: ANN001
    import threading

    from monitor.modelset import load_model, warm_rest

    model = load_model("m", tiny_bundle, MAX_BATCH, all_buckets=False)
    warm_rest({"m": model}, threading.Event())
    assert not model.scorer.warming and set(model.scorer._forwards) == set(model.scorer.buckets)
    np.testing.assert_allclose(model.scorer.score(images[:1]).scores, one_by_one[:1], rtol=1e-5)


# --- call plans: a chunk smaller than max_batch, padded or split by the buckets' measured times -------------

def test_a_chunk_costing_the_same_whatever_its_size_is_one_padded_call() -> None:
    from monitor.model.scorer import plan_calls

    flat = {1: 2.5, 4: 3.0, 16: 5.0, 32: 6.0}  # per-call overhead dominates: a small model, a GPU
    assert plan_calls(3, flat) == [4]
    assert plan_calls(20, flat) == [32]


def test_a_chunk_whose_cost_grows_with_its_size_is_split_into_exact_calls() -> None:
    from monitor.model.scorer import plan_calls

    linear = {1: 21.0, 4: 79.0, 16: 314.0, 32: 717.0}  # ms: a 256x256 colour model on two cores
    assert plan_calls(20, linear) == [16, 4]
    assert plan_calls(5, linear) == [4, 1]


def test_plans_within_two_percent_take_the_fewer_calls() -> None:
    from monitor.model.scorer import plan_calls

    assert plan_calls(8, {1: 1.0, 4: 4.0, 16: 7.9, 32: 20.0}) == [16]  # 4 + 4 = 8.0 is no real saving


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 40), costs=st.lists(st.floats(0.1, 100.0), min_size=4, max_size=4))
def test_a_plan_covers_the_chunk_and_costs_no_more_than_any_other(k: int, costs: list[float]) -> None:
    from monitor.model.scorer import plan_calls

    seconds = dict(zip((1, 4, 16, 32), costs, strict=True))
    plan = plan_calls(k, seconds)
    assert sum(plan) >= k and sum(plan) - plan[-1] < k  # every call but the last is full
    cheapest = _cheapest(k, seconds)
    assert sum(seconds[s] for s in plan) <= cheapest * 1.02 ** len(plan) + 1e-9


def _cheapest(k: int, seconds: dict[int, float]) -> float:
    """Brute force: the least total time of any calls covering k."""
    best = [0.0] + [float("inf")] * k
    for i in range(1, k + 1):
        best[i] = min(c + best[max(0, i - s)] for s, c in seconds.items())
    return best[k]


def test_the_scorer_pads_until_every_bucket_has_a_measured_time(tiny_bundle) -> None:  # noqa: ANN001
    scorer = BatchScorer(load_bundle(tiny_bundle), max_batch=32)
    assert scorer.calls(20) == [20]  # nothing measured yet: one call, padded to 32
    scorer.warm_buckets(scorer.buckets)  # traces each, then times a second run of each
    x = np.zeros((32, 32, 32, 1), np.float32)
    scorer.score_inputs(x)
    scorer.score_inputs(x)  # max_batch's first call traced it: its second is timed
    assert set(scorer.bucket_seconds) == {1, 4, 16, 32}
    assert sum(scorer.calls(20)) == 20 and scorer.calls(70)[:2] == [32, 32]


def test_a_split_chunk_scores_the_same_as_a_padded_one(tiny_bundle) -> None:  # noqa: ANN001
    scorer = BatchScorer(load_bundle(tiny_bundle), max_batch=32)
    rng = np.random.default_rng(5)
    batch = [normal_image(rng, 32) if i % 4 else anomalous_image(rng, 32) for i in range(21)]
    padded = scorer.score(batch)
    scorer.bucket_seconds = {1: 1.0, 4: 4.0, 16: 16.0, 32: 32.0}  # as if measured: cost in proportion to size
    assert scorer.calls(21) == [16, 4, 1]
    split = scorer.score(batch)
    np.testing.assert_allclose(split.scores, padded.scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(split.error_maps, padded.error_maps, rtol=1e-4, atol=1e-6)


def test_images_at_the_model_size_score_the_same_bits_as_their_preprocessed_inputs(scorer, images,  # noqa: ANN001
                                                                                    monkeypatch) -> None:  # noqa: ANN001
    # A large batch of uint8 images at the model's size is scaled inside TensorFlow; any other batch by numpy
    # (to_model_batch). Both must give the same bits, or a score would depend on the path its image took.
    from monitor.model import scorer as module
    from monitor.model.preprocess import to_model_batch

    monkeypatch.setattr(module, "TF_SCALED_VALUES", 0)  # every batch counts as large
    rng = np.random.default_rng(3)
    every_level = [rng.permutation(np.arange(32 * 32) % 256).astype(np.uint8).reshape(32, 32) for _ in range(6)]
    for batch in (images[:1], images[:5], images + every_level):
        ready = scorer.score(batch)
        numpy_scaled = scorer.score_inputs(to_model_batch(batch, 32, 32, 1))
        np.testing.assert_array_equal(ready.inputs, numpy_scaled.inputs)
        np.testing.assert_array_equal(ready.error_maps, numpy_scaled.error_maps)
        np.testing.assert_array_equal(ready.scores, numpy_scaled.scores)


def test_a_large_batch_at_the_model_size_is_not_scaled_by_numpy(scorer, images, monkeypatch) -> None:  # noqa: ANN001
    from monitor.model import scorer as module

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("to_model_batch called for a batch TensorFlow scales")

    monkeypatch.setattr(module, "to_model_batch", refuse)
    monkeypatch.setattr(module, "TF_SCALED_VALUES", MAX_BATCH * 32 * 32)
    out = scorer.score(images[:MAX_BATCH])
    assert out.inputs.dtype == np.float32 and out.inputs.max() <= 1.0 and len(out) == MAX_BATCH


def test_importing_the_scorer_leaves_tensorflow_s_devices_to_configure() -> None:
    # select_device turns a GPU's memory growth on, which TensorFlow allows only before its devices are set up;
    # a tensor made at import (as a module constant once was) sets them up. On a CPU the same rule shows through
    # the logical device configuration.
    import subprocess
    import sys

    code = ("import monitor.model.scorer, tensorflow as tf\n"
            "cpu = tf.config.list_physical_devices('CPU')[0]\n"
            "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
