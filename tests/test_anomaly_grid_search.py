"""The vectorised grid search against brute-force loops over every grid point."""
import numpy as np
import pytest

from brainjax.anomaly import grid_search, reference_loop, synthetic_maps
from brainjax.evaluation import classification


def _brute_force(scores, labels, cutoffs, metric):
  best, where = -np.inf, None
  for c in range(scores.shape[1]):
    for v, cut in enumerate(cutoffs):
      value = classification.classification_metrics(
          labels, (scores[:, c] >= cut).astype(int))[metric]
      if np.round(value, 12) > np.round(best, 12):
        best, where = value, (c, v)
  return where, best


@pytest.mark.parametrize('metric', ['f1', 'accuracy', 'balanced_accuracy', 'macro_f1'])
@pytest.mark.parametrize('seed', range(3))
def test_select_equals_brute_force(metric, seed):
  rng = np.random.default_rng(seed)
  labels = (rng.random(40) < 0.4).astype(int)
  scores = np.round(rng.random((40, 7)) + 0.3 * labels[:, None], 1)  # many ties
  cutoffs = np.linspace(0, 1.3, 14)
  chosen = grid_search.select(scores, labels, cutoffs, metric)
  (c, v), value = _brute_force(scores, labels, cutoffs, metric)
  assert (chosen.outer, chosen.inner) == (c, v)
  assert chosen.value == pytest.approx(value)


def test_select_in_chunks_equals_select_at_once(monkeypatch):
  # (chunks of outer points keep memory bounded; the first maximum must win across them)
  rng = np.random.default_rng(5)
  labels = (rng.random(40) < 0.4).astype(int)
  scores = np.round(rng.random((40, 11)) + 0.3 * labels[:, None], 1)  # many ties
  cutoffs = np.linspace(0, 1.3, 14)
  whole = grid_search.select(scores, labels, cutoffs, 'f1')
  for points in (1, 14, 15, 14 * 3, 1000):  # one outer point a chunk, ..., all at once
    monkeypatch.setattr(grid_search, '_POINTS_PER_CHUNK', points)
    assert grid_search.select(scores, labels, cutoffs, 'f1') == whole
  tied = np.tile(scores[:, :1], (1, 6))  # every outer point the same: the first one wins
  monkeypatch.setattr(grid_search, '_POINTS_PER_CHUNK', 14)
  assert grid_search.select(tied, labels, cutoffs, 'f1').outer == 0


def test_a_grid_of_the_largest_allowed_sizes_fits_in_memory():
  # 10**4 outer points x 10**4 cut-offs needed some 20 GB at once (a MemoryError after
  # training); in chunks a few hundred MB at most.
  import resource
  rng = np.random.default_rng(0)
  labels = (rng.random(12) < 0.5).astype(int)
  scores = rng.random((12, 10_000))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  chosen = grid_search.select(scores, labels, np.linspace(0, 1, 10_000), 'f1')
  grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
  assert grown_mb < 1000 and 0 <= chosen.outer < 10_000


def test_ties_pick_the_first_grid_point():
  labels = np.array([0, 1])
  scores = np.array([[0.0, 0.0], [1.0, 1.0]])  # (image, outer): both outer points perfect
  chosen = grid_search.select(scores, labels, [0.5, 0.6, 0.7])
  assert (chosen.outer, chosen.inner, chosen.value) == (0, 0, 1.0)


def test_confusion_grid_counts_every_grid_point():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 30)
  scores = np.round(rng.random((30, 9)), 1)  # scores equal to cut-offs: >= counts them
  cutoffs = [0.0, 0.2, 0.5, 1.1]
  tn, fp, fn, tp = grid_search.confusion_grid(scores, labels, cutoffs)
  predicted = scores[:, :, None] >= np.asarray(cutoffs)  # (N, C, V)
  np.testing.assert_array_equal(tp, predicted[labels == 1].sum(axis=0))
  np.testing.assert_array_equal(fp, predicted[labels == 0].sum(axis=0))
  np.testing.assert_array_equal(tn + fp + fn + tp, 30)
  one_class = grid_search.confusion_grid(scores, np.ones(30), cutoffs)
  np.testing.assert_array_equal(one_class[1], 0)  # no healthy image: no false positive
  assert grid_search.confusion_grid(scores, labels, [])[3].shape == (9, 0)


def test_bad_metric_and_labels():
  with pytest.raises(ValueError, match='unknown selection metric'):
    grid_search.select(np.zeros((2, 1)), [0, 1], [0.5], 'auc')
  with pytest.raises(ValueError, match='labels'):
    grid_search.select(np.zeros((2, 1)), [0, 2], [0.5])


@pytest.fixture(scope='module')
def small_set():
  errors, labels, _ = synthetic_maps.synthetic_error_maps(24, 32, seed=7)
  return errors, labels


def test_giaem_search_equals_loop(small_set):
  errors, labels = small_set
  thresholds = np.arange(10, dtype=np.float32) / 10
  tumor_indices = np.geomspace(1e-3, 1, 12)
  fast = grid_search.search_giaem(errors, labels, thresholds, tumor_indices)
  params, value = reference_loop.loop_giaem(errors, labels, thresholds, tumor_indices)
  assert fast.params == params and fast.value == pytest.approx(value)


def test_dbscan_search_equals_loop(small_set):
  errors, labels = small_set
  args = ([0.5, 0.7], [1.5 / 32, 2.6 / 32], [3, 6], np.geomspace(1e-3, 0.5, 10))
  fast = grid_search.search_dbscan(errors, labels, *args)
  params, value = reference_loop.loop_dbscan(errors, labels, *args)
  assert fast.params == params and fast.value == pytest.approx(value)


def test_kmeans_image_search_equals_loop(small_set):
  errors, labels = small_set
  tumor_indices = np.linspace(0.3, 0.7, 15)
  fast = grid_search.search_kmeans_image(errors, labels, tumor_indices, 'accuracy')
  params, value = reference_loop.loop_cutoff(
      labels, reference_loop.loop_kmeans_image_scores(errors), tumor_indices, 'accuracy')
  assert fast.params == params and fast.value == pytest.approx(value)


def test_global_kmeans_search_equals_loop(small_set):
  errors, labels = small_set
  thresholds = np.array([0.1, 0.3, 0.5, 0.7], np.float32)
  alphas = np.geomspace(0.25, 4, 9)
  fast = grid_search.search_global_kmeans(errors, labels, thresholds, alphas)
  params, value = reference_loop.loop_global_kmeans(errors, labels, thresholds, alphas)
  assert fast.params == params and fast.value == pytest.approx(value)
  assert fast.extra['centroids'].shape == (2, 32 * 32)


def test_values_equal_but_for_rounding_go_to_the_first_outer_point():
  # balanced accuracy (recall + specificity) / 2: (0.1 + 0.7) / 2 = 0.39999999999999997 at
  # outer point 0, (0.3 + 0.5) / 2 = 0.4 at outer point 1: one value, first point wins.
  labels = np.array([1] * 10 + [0] * 10)
  scores = np.zeros((20, 2))
  scores[:1, 0] = 1      # 1 of 10 tumours called tumour
  scores[10:13, 0] = 1   # 3 of 10 healthy called tumour: specificity 0.7
  scores[:3, 1] = 1      # 3 of 10 tumours
  scores[10:15, 1] = 1   # 5 of 10 healthy: specificity 0.5
  chosen = grid_search.select(scores, labels, np.array([0.5]), 'balanced_accuracy')
  assert (chosen.outer, chosen.inner) == (0, 0)


def test_dbscan_search_names_the_grid_point_it_scored(monkeypatch):
  labels = np.array([1, 1, 0, 0])
  thresholds, eps, min_samples = [0.5, 0.6], [0.01, 0.02], [3, 4, 5]
  scores = np.zeros((4, 2, 2, 3))
  scores[:2, 1, 0, 2] = 1.0  # only (threshold 0.6, eps 0.01, min_samples 5) separates them
  monkeypatch.setattr(grid_search.dbscan_rule, 'dbscan_grid_scores', lambda *a, **k: scores)
  found = grid_search.search_dbscan(np.zeros((4, 16), np.float32), labels, thresholds, eps,
                                    min_samples, [0.5])
  assert found.params == dict(anomaly_threshold=float(np.float32(0.6)), eps=0.01, min_samples=5,
                              tumor_index=0.5)
  assert found.value == 1.0
