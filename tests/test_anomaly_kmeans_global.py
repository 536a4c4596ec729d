"""Global KMeans: known answer, the alpha rule, and agreement with scikit-learn."""
import numpy as np
import pytest

from brainjax.anomaly import kmeans_global, reference_loop, synthetic_maps


def _two_groups():
  """4 'tumour' rows with a bright block, 4 'healthy' rows with faint noise."""
  rng = np.random.default_rng(0)
  errors = 0.2 * rng.random((8, 10, 10))
  errors[:4, 3:7, 3:7] = 0.9
  errors[:4, 2, 2] = 1.0
  errors[4:, 0, 0] = 1.0
  return errors.reshape(8, -1).astype(np.float32)


def test_known_answer():
  errors = _two_groups()
  out = kmeans_global.global_kmeans(errors, anomaly_threshold=0.5, alpha=1.0)
  np.testing.assert_array_equal(out.prediction, [1, 1, 1, 1, 0, 0, 0, 0])
  centroids = kmeans_global.fit_global_kmeans(errors, 0.5)
  assert centroids[0].sum() == 17 and centroids[1].sum() == 1  # (tumour, healthy) masses
  # tumour rows sit on the tumour centroid: d_T = 0, so s = 1
  np.testing.assert_allclose(out.score[:4], 1.0)
  np.testing.assert_allclose(out.score[4:], 0.0)
  np.testing.assert_array_equal(out.region, errors >= 0.5)


def test_alpha_rule():
  errors = _two_groups()
  centroids = np.stack([np.full(100, 0.5), np.zeros(100)])  # tumour, healthy
  x = (errors >= np.float32(0.5)).astype(float)
  d_t = np.linalg.norm(x - centroids[0], axis=1)
  d_h = np.linalg.norm(x - centroids[1], axis=1)
  for alpha in (0.5, 1.0, 2.0, 4.0):
    out = kmeans_global.global_kmeans(errors, 0.5, alpha, centroids=centroids)
    np.testing.assert_allclose(out.score, d_h / (d_t + d_h))
    np.testing.assert_array_equal(out.prediction, d_t <= alpha * d_h)


# 0.01 and 0.02: 71% and 57% of the pixels anomalous (the complement pattern, rows moving)
@pytest.mark.parametrize('threshold', [0.0, 0.01, 0.02, 0.05, 0.3, 0.6, 0.9])
def test_matches_sklearn_lloyd_from_the_same_start(threshold):
  errors, _, _ = synthetic_maps.synthetic_error_maps(60, 24, seed=1)
  ours = kmeans_global.global_kmeans(errors, threshold, 1.0).score
  np.testing.assert_allclose(ours, reference_loop.global_scores(errors, threshold), atol=1e-12)


@pytest.mark.parametrize('max_iter', [1, 2, 3])
def test_max_iter_counts_centroid_updates_as_scikit_learn_does(max_iter):
  # scikit-learn's max_iter=m moves the centroids m times (m=1: once, from the start split)
  errors, _, _ = synthetic_maps.synthetic_error_maps(60, 24, seed=1)
  thresholds = np.array([0.01, 0.05, 0.3], np.float32)
  grid = kmeans_global.global_kmeans_grid_scores(errors, thresholds, max_iter=max_iter)
  for k, t in enumerate(thresholds):
    np.testing.assert_allclose(grid.scores[:, k],
                               reference_loop.global_scores(errors, t, max_iter), atol=1e-12)


def test_matches_sklearn_where_the_bounds_skip_rows_over_many_iterations():
  # Overlapping clusters that take many Lloyd iterations, so that Hamerly's bounds, moved by
  # each centroid's own shift, decide which rows are skipped (swapped shifts went unseen by
  # the problems above, which converge in a few).
  rng = np.random.default_rng(1)
  strength, pattern = rng.uniform(size=(400, 1)), rng.uniform(size=(1, 256))
  errors = np.clip(0.6 * strength * pattern + 0.4 * rng.uniform(size=(400, 256)), 0, 1)
  thresholds = np.array([0.6, 0.7, 0.8], np.float32)
  grid = kmeans_global.global_kmeans_grid_scores(errors.astype(np.float32), thresholds)
  for k, t in enumerate(thresholds):
    np.testing.assert_allclose(grid.scores[:, k],
                               reference_loop.global_scores(errors.astype(np.float32), t),
                               atol=1e-12)


def test_grid_matches_single_fits():
  errors, _, _ = synthetic_maps.synthetic_error_maps(40, 24, seed=2)
  thresholds = np.array([0.0, 0.01, 0.02, 0.1, 0.4, 0.8], np.float32)  # dense and sparse regimes
  grid = kmeans_global.global_kmeans_grid_scores(errors, thresholds)
  for k, t in enumerate(thresholds):
    np.testing.assert_allclose(grid.centroids[k], kmeans_global.fit_global_kmeans(errors, t))
    np.testing.assert_allclose(grid.scores[:, k], kmeans_global.global_kmeans(errors, t, 1).score)


def test_rows_sharing_the_largest_mass_still_split():
  # Masses 2, 2, 2, 0: none above the median, so the start put both centroids on the mean row
  # and every score was 0.5. Now those at the largest mass start cluster 1.
  errors = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], np.float32)
  centroids = kmeans_global.fit_global_kmeans(errors, 0.5)
  np.testing.assert_allclose(centroids, [[2 / 3, 2 / 3, 1 / 3, 1 / 3], [0, 0, 0, 0]])
  ours = kmeans_global.global_kmeans(errors, 0.5, 1.0).score
  np.testing.assert_allclose(ours, reference_loop.global_scores(errors, 0.5), atol=1e-12)
  assert ours[3] == 0.0 and (ours[:3] > 0.5).all()


def test_identical_rows_form_one_cluster():
  errors = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (5, 1))
  out = kmeans_global.global_kmeans(errors, 0.5, 1.0)
  np.testing.assert_allclose(out.score, 0.5)  # equidistant from equal centroids
  # d_T <= alpha * d_H with equality at alpha = 1: a tie is a tumour (score >= 1 / (1 + alpha))
  np.testing.assert_array_equal(out.prediction, 1)
  assert not kmeans_global.global_kmeans(errors, 0.5, 0.99).prediction.any()


def test_the_larger_anomalous_mass_is_the_tumour_centroid_and_a_tie_is_cluster_1():
  light, heavy = [0.5, 0.0, 0.0], [0.5, 0.5, 0.0]
  np.testing.assert_array_equal(kmeans_global._tumour_first(np.array([heavy, light])), [0, 1])
  np.testing.assert_array_equal(kmeans_global._tumour_first(np.array([light, heavy])), [1, 0])
  equal = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
  np.testing.assert_array_equal(kmeans_global._tumour_first(equal), [1, 0])


@pytest.mark.parametrize('kwargs, message', [
    (dict(alpha=0.0), 'alpha'), (dict(alpha=1.0, centroids=np.zeros((2, 3))), 'centroids')])
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    kmeans_global.global_kmeans(_two_groups(), 0.5, **kwargs)


@pytest.mark.parametrize('fraction', [0.2, 0.8])  # a pattern of the ones, then of the zeros
def test_binary_rows_products_and_sums_are_exact(fraction):
  rng = np.random.default_rng(3)
  mask = rng.random((12, 16)) < fraction
  x = kmeans_global._BinaryRows.from_mask(mask)
  assert x.complement == (fraction > 0.5)
  dense = mask.astype(np.int64)
  vectors = {'int': rng.integers(0, 50, (2, 16)),
             'int past int32 sums': rng.integers(2 ** 28, 2 ** 29, (2, 16)),
             'float': rng.random((2, 16))}
  for name, v in vectors.items():
    for rows in (None, np.array([1, 4]), np.arange(2, 12)):  # a copy of few rows, a full pass
      expected = (dense if rows is None else dense[rows]) @ v.T
      got = x.rows_dot(rows, v)
      if name == 'float':
        np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=name)
      else:
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected, err_msg=name)
  weights = np.zeros(12, np.int64)
  weights[[0, 5]], weights[7] = 1, -1
  np.testing.assert_array_equal(x.rows_sum(weights), weights @ dense)
  weights[:] = rng.integers(-1, 2, 12)  # most rows: the full pass
  np.testing.assert_array_equal(x.rows_sum(weights), weights @ dense)
  np.testing.assert_array_equal(x.rows_sum(), dense.sum(axis=0))


def test_the_start_puts_the_rows_above_the_median_mass_in_cluster_1():
  # (reference_loop.global_scores starts scikit-learn with this same function, so the
  # agreement tests above cannot see a change to it)
  np.testing.assert_array_equal(kmeans_global.start_members(np.array([3, 0, 2, 4, 1])),
                                [True, False, False, True, False])
  np.testing.assert_array_equal(kmeans_global.start_members(np.array([5, 1, 5, 5])),
                                [True, False, True, True])  # none above the median 5
