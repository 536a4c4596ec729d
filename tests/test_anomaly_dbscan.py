"""Grid DBSCAN: hand-made maps with known clusters, and agreement with scikit-learn."""
import numpy as np
import pytest
from scipy import ndimage
from sklearn.cluster import DBSCAN

from brainjax.anomaly import dbscan, pixel_features, reference_loop


def _sklearn_labels(row, threshold, eps, min_samples, h, w):
  points = np.flatnonzero(row >= np.float32(threshold))
  if points.size == 0:
    return points, points
  features = pixel_features.pixel_features(row, h, w)[points]
  return points, DBSCAN(eps=eps, min_samples=min_samples).fit(features).labels_


def _maps():
  rng = np.random.default_rng(0)
  noise = rng.random((3, 32, 32))
  blurred = ndimage.gaussian_filter(rng.standard_normal((3, 32, 32)), (0, 1.5, 1.5))
  yy, xx = np.mgrid[:32, :32]
  blob = np.exp(-((yy - 12) ** 2 + (xx - 20) ** 2) / 18.0)
  maps = np.concatenate([noise, np.abs(blurred) + 2 * blob])
  maps = (maps - maps.min((1, 2), keepdims=True)) / np.ptp(maps, axis=(1, 2), keepdims=True)
  return maps.reshape(6, -1).astype(np.float32)


def test_two_blobs_known_answer():
  errors = np.full((1, 12, 12), 0.1, np.float32)
  errors[0, 2:5, 2:5] = 0.9  # 9-pixel blob
  errors[0, 8:10, 8:10] = 0.8  # 4-pixel blob
  errors[0, 0, 11] = 0.95  # lone pixel
  errors = errors.reshape(1, -1)
  eps = 1.5 / 12  # the 8-neighbourhood (one pixel step is 1/12)
  out = dbscan.dbscan(errors, 0.5, eps, 4, tumor_index=0.05)
  assert out.score[0] == pytest.approx(9 / 144) and out.prediction[0] == 1
  assert out.region.reshape(12, 12)[2:5, 2:5].all() and out.region.sum() == 9
  labels = dbscan.dbscan_labels(errors, 0.5, eps, 4).reshape(12, 12)
  assert set(np.unique(labels[2:5, 2:5])) == {0} and set(np.unique(labels[8:10, 8:10])) == {1}
  assert labels[0, 11] == -1 and labels[0, 0] == -1
  # min_samples 5: the 2x2 blob has no core; the 3x3 blob's corners become border points
  assert dbscan.dbscan(errors, 0.5, eps, 5, 0.05).score[0] == pytest.approx(9 / 144)
  assert dbscan.dbscan_labels(errors, 0.5, eps, 5).max() == 0
  assert dbscan.dbscan(errors, 0.5, eps, 5, tumor_index=0.07).prediction[0] == 0


def test_border_point_between_two_clusters_joins_the_first():
  # one row, same error: cores at columns 1-3 and 7-9; column 5 is within eps of
  # cores 3 and 7 but itself has only 3 neighbours -> border of the first cluster.
  row = np.zeros(11, np.float32)
  row[[0, 1, 2, 3, 5, 7, 8, 9, 10]] = 0.9
  errors = row[None]
  eps = 2.5 / 11
  labels = dbscan.dbscan_labels(errors, 0.5, eps, 4, image_shape=(1, 11))[0]
  np.testing.assert_array_equal(labels, [0, 0, 0, 0, -1, 0, -1, 1, 1, 1, 1])
  _, expected = _sklearn_labels(row, 0.5, eps, 4, 1, 11)
  np.testing.assert_array_equal(labels[labels >= 0], expected)
  assert dbscan.dbscan(errors, 0.5, eps, 4, 0.4, image_shape=(1, 11)).score[0] == 5 / 11


@pytest.mark.parametrize('threshold, eps_pixels, min_samples', [
    (0.5, 2.5, 4), (0.3, 1.6, 3), (0.6, 3.5, 10), (0.0, 1.2, 2), (0.7, 0.5, 1), (0.4, 2.2, 1)])
def test_labels_match_sklearn(threshold, eps_pixels, min_samples):
  errors = _maps()
  eps = eps_pixels / 32
  labels = dbscan.dbscan_labels(errors, threshold, eps, min_samples)
  for row, ours in zip(errors, labels):
    points, expected = _sklearn_labels(row, threshold, eps, min_samples, 32, 32)
    np.testing.assert_array_equal(ours[points], expected)  # same ids, border points included
    assert np.all(ours[np.setdiff1d(np.arange(row.size), points)] == -1)


def test_grid_scores_match_rule_and_sklearn(monkeypatch):
  monkeypatch.setattr(dbscan, '_MAX_CANDIDATES_PER_CHUNK', 700)  # several chunks
  errors = _maps()
  thresholds, eps_values, min_samples = [0.3, 0.6], [1.5 / 32, 2.7 / 32], [3, 6]
  grid = dbscan.dbscan_grid_scores(errors, thresholds, eps_values, min_samples)
  assert grid.shape == (6, 2, 2, 2)
  for t, threshold in enumerate(thresholds):
    for e, eps in enumerate(eps_values):
      for m, ms in enumerate(min_samples):
        np.testing.assert_array_equal(grid[:, t, e, m],
                                      dbscan.dbscan(errors, threshold, eps, ms, 0.1).score)
        expected = [reference_loop.largest_cluster_fraction(r, threshold, eps, ms, 32, 32)
                    for r in errors]
        np.testing.assert_allclose(grid[:, t, e, m], expected)


def test_errors_exactly_at_a_later_grid_threshold_are_anomalous_there():
  # (the grid's later thresholds keep the candidates >= them, as the rule itself does)
  errors = np.zeros((1, 64), np.float32)
  errors[0, [0, 1, 2, 8, 9, 10]] = 0.5
  grid = dbscan.dbscan_grid_scores(errors, [0.25, 0.5], [0.2], [3], (8, 8))
  assert grid[0, 1, 0, 0] == dbscan.dbscan(errors, 0.5, 0.2, 3, 0.0, (8, 8)).score[0] == 6 / 64


def test_of_two_largest_clusters_the_region_is_the_first():
  errors = np.zeros((1, 8, 8), np.float32)
  errors[0, 0:2, 0:2] = errors[0, 0:2, 6:8] = 0.9  # two 4-pixel clusters
  region = dbscan.dbscan(errors.reshape(1, -1), 0.5, 0.2, 3, 0.0, (8, 8)).region[0]
  np.testing.assert_array_equal(np.flatnonzero(region), [0, 1, 8, 9])


def test_no_candidates_scores_zero():
  errors = np.full((2, 16), 0.2, np.float32)
  assert np.all(dbscan.dbscan_grid_scores(errors, [0.5], [0.2], [1]) == 0)
  assert np.all(dbscan.dbscan(errors, 0.5, 0.2, 1, 0.0).region == False)  # noqa: E712


@pytest.mark.parametrize('eps, min_samples, message', [
    ([0.0], [2], 'eps must be positive'), ([0.1], [0], r'min_samples must be integers in \[1,'),
    ([0.1, 0.26], [2], 'at most 0.25'), ([1e12], [2], 'at most 0.25'),
    ([np.inf], [2], 'eps must be positive'),
    ([0.1], [1.5], 'min_samples must be integers in'),
    # (2**63 wrapped to -2**63 in int64, every pixel a core point; past uint64, a TypeError)
    ([0.1], [2 ** 63], 'min_samples must be integers in'),
    ([0.1], [10 ** 30], 'min_samples must be integers in'),
    ([0.1], [1e30], 'min_samples must be integers in')])
def test_bad_parameters(eps, min_samples, message):
  with pytest.raises(ValueError, match=message):
    dbscan.dbscan_grid_scores(np.zeros((1, 16), np.float32), [0.5], eps, min_samples)


def test_a_large_eps_clusters_fewer_images_at_once():
  # Each candidate gathers its whole half window: at eps 0.25 one all-anomalous 128 px map is
  # 16384 x ~1600 entries, so such maps are clustered one at a time, not 12 to a chunk.
  counts = np.full(3, 128 * 128)
  assert len(list(dbscan._image_chunks(counts, 0.025, 128, 128))) == 1
  assert [c.stop - c.start for c in dbscan._image_chunks(counts, 0.25, 128, 128)] == [1, 1, 1]
