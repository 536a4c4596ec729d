"""Synthetic error maps and the benchmark harness (tiny sizes)."""
import math

import numpy as np

from brainjax.anomaly import evaluate, kmeans_image, reference_loop, synthetic_maps


def test_synthetic_maps():
  errors, labels, masks = synthetic_maps.synthetic_error_maps(12, 32, seed=0)
  assert errors.shape == (12, 1024) and errors.dtype == np.float32
  np.testing.assert_allclose(errors.min(axis=1), 0)
  np.testing.assert_allclose(errors.max(axis=1), 1)
  assert set(np.unique(labels)) <= {0, 1}
  assert np.all(masks[labels == 1].reshape(-1, 1024).sum(axis=1) > 0)
  assert np.all(masks[labels == 0] == 0)
  again, _, _ = synthetic_maps.synthetic_error_maps(12, 32, seed=0)
  np.testing.assert_array_equal(errors, again)


def test_benchmark_reports_every_rule():
  errors, labels, _ = synthetic_maps.synthetic_error_maps(16, 32, seed=1)
  config = evaluate.default_anomaly_config()
  config.num_anomaly_thresholds = 10
  config.num_global_thresholds = 5
  config.num_tumor_index = 10
  config.num_alpha = 10
  config.dbscan_anomaly_thresholds = (0.6,)
  config.dbscan_eps = (2.5 / 32,)
  config.dbscan_min_samples = (4,)
  out = reference_loop.benchmark(errors, labels, config)
  assert set(out) == set(config.rules)
  for timing in out.values():
    assert timing['fast_s'] > 0 and timing['loop_s'] > 0
    assert timing['speedup'] == timing['loop_s'] / timing['fast_s']
    assert timing['same_selection'] is True


def test_benchmark_compares_the_single_image_kmeans_scores(monkeypatch):
  # Where the rule's scores hardly tell the classes apart, many cut-offs tie and both paths
  # pick the first: the selection compared nothing (wrong scores still reported the same).
  errors, labels, _ = synthetic_maps.synthetic_error_maps(8, 32, seed=2)
  config = evaluate.default_anomaly_config()
  config.num_tumor_index = 4
  config.rules = ('kmeans',)
  assert reference_loop.benchmark(errors, labels, config)['kmeans']['max_score_difference'] == 0
  right = kmeans_image.kmeans_image_scores
  monkeypatch.setattr(kmeans_image, 'kmeans_image_scores', lambda *a: right(*a) / 2)
  assert reference_loop.benchmark(errors, labels, config)['kmeans']['max_score_difference'] > 0.1


def test_benchmark_says_when_the_selections_differ(monkeypatch):
  errors, labels, _ = synthetic_maps.synthetic_error_maps(8, 32, seed=2)
  config = evaluate.default_anomaly_config()
  config.num_anomaly_thresholds = config.num_tumor_index = 4
  config.rules = ('giaem',)
  monkeypatch.setattr(reference_loop, 'loop_giaem', lambda *args: ({'tumor_index': -1.0}, 0.0))
  out = reference_loop.benchmark(errors, labels, config)
  assert out['giaem']['same_selection'] is False


def test_about_half_are_tumour_maps_whose_mask_covers_the_blob():
  size = 64
  errors, labels, masks = synthetic_maps.synthetic_error_maps(200, size, seed=3)
  assert 0.4 <= labels.mean() <= 0.6
  assert not masks[labels == 0].any()
  smallest_blob = math.pi * (1.2 * 0.04 * size) ** 2  # radius >= 4% of the side, mask 1.2 r
  areas = masks[labels == 1].reshape(-1, size * size).sum(1)
  assert areas.min() >= 0.8 * smallest_blob
  # the mask holds each tumour map's brightest pixels
  tumour = errors[labels == 1]
  peak = tumour.argmax(1)
  assert masks[labels == 1].reshape(-1, size * size)[np.arange(len(peak)), peak].mean() > 0.9
