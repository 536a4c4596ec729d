"""Single-image KMeans: known answer, and agreement with scikit-learn."""
import fractions

import numpy as np
import pytest
from sklearn.cluster import KMeans

from brainjax.anomaly import kmeans_image, pixel_features, reference_loop, synthetic_maps


def _blob_map(size=16, seed=0):
  """Low noise everywhere, a bright 8x8 block (a quarter of the image)."""
  rng = np.random.default_rng(seed)
  m = 0.05 * rng.random((size, size))
  m[2:10, 5:13] = 0.95 + 0.05 * rng.random((8, 8))
  return m.reshape(-1).astype(np.float32)


def test_the_coarse_stage_s_positions_are_its_blocks_centres():
  # (the reference loop takes them from the same function, so it would not see them move)
  rows, cols = pixel_features.pixel_grid(16, 16)
  coarse_rows, coarse_cols = pixel_features.pixel_grid(16, 16, 4)
  block_means = lambda x: x.reshape(4, 4, 4, 4).mean(axis=(1, 3)).reshape(-1)
  np.testing.assert_allclose(coarse_rows, block_means(rows), rtol=1e-6)
  np.testing.assert_allclose(coarse_cols, block_means(cols), rtol=1e-6)
  assert coarse_rows[0] == 1.5 / 16


def test_well_separated_map_known_answer_and_sklearn_partition():
  errors = np.stack([_blob_map(seed=s) for s in range(3)])
  out = kmeans_image.kmeans_image(errors, tumor_index=0.2)
  np.testing.assert_allclose(out.score, 0.25)
  np.testing.assert_array_equal(out.prediction, 1)
  assert out.region[0].reshape(16, 16)[2:10, 5:13].all()
  assert kmeans_image.kmeans_image(errors, tumor_index=0.3).prediction.sum() == 0
  for row, region in zip(errors, out.region):
    fitted = KMeans(2, n_init=10, random_state=0).fit(pixel_features.pixel_features(row, 16, 16))
    same = fitted.labels_ == fitted.labels_[np.argmax(row)]
    np.testing.assert_array_equal(same, region)  # same partition up to label swap


@pytest.mark.parametrize('size', [32, 30])  # 30: no coarse stage
def test_matches_sklearn_lloyd_from_the_same_start(size):
  errors, _, _ = synthetic_maps.synthetic_error_maps(6, size, seed=4)
  anomalous, _, _ = kmeans_image.kmeans_image_clusters(errors)
  ours = anomalous.mean(axis=1)
  expected = [reference_loop.anomalous_share(row, size, size) for row in errors]
  np.testing.assert_allclose(ours, expected)


@pytest.mark.parametrize('max_iter', [1, 3])
def test_max_iter_stops_like_sklearn(max_iter):
  errors, _, _ = synthetic_maps.synthetic_error_maps(6, 32, seed=4)
  anomalous, _, _ = kmeans_image.kmeans_image_clusters(errors, max_iter=max_iter)
  expected = [reference_loop.anomalous_share(row, 32, 32, max_iter) for row in errors]
  np.testing.assert_allclose(anomalous.mean(axis=1), expected)


def test_each_image_clustered_as_if_alone():
  # More maps than one call takes and than there are slots: slots get refilled,
  # the last call is padded.
  n = kmeans_image._IMAGES_PER_CALL + 6
  errors, _, _ = synthetic_maps.synthetic_error_maps(n, 32, seed=7)
  _, second, centroids = kmeans_image.kmeans_image_clusters(errors)
  for i in (0, kmeans_image._SLOTS, n - 7, n - 1):
    _, alone, alone_centroids = kmeans_image.kmeans_image_clusters(errors[i:i + 1])
    np.testing.assert_array_equal(alone[0], second[i])
    np.testing.assert_array_equal(alone_centroids[0], centroids[i])


def test_inertia_close_to_sklearn_kmeans_plus_plus():
  # Lloyd finds a local optimum: mostly the one k-means++ with 10 restarts finds.
  errors, _, _ = synthetic_maps.synthetic_error_maps(5, 32, seed=5)
  _, second, centroids = kmeans_image.kmeans_image_clusters(errors)
  ratios = []
  for row, member, c in zip(errors, second, centroids):
    x = pixel_features.pixel_features(row, 32, 32)
    ours = np.sum((x - c[member.astype(int)]) ** 2)
    ratios.append(ours / KMeans(2, n_init=4, random_state=0).fit(x).inertia_)
  assert max(ratios) < 1.1 and np.median(ratios) < 1.001


def test_scores_and_rule_agree():
  errors, _, _ = synthetic_maps.synthetic_error_maps(5, 32, seed=6)
  scores = kmeans_image.kmeans_image_scores(errors)
  out = kmeans_image.kmeans_image(errors, tumor_index=float(np.median(scores)))
  np.testing.assert_array_equal(out.score, scores)
  np.testing.assert_array_equal(out.prediction, scores >= np.median(scores))


def test_a_constant_map_has_no_anomalous_cluster():
  # A perfect reconstruction normalises to zeros: two clusters split it by position only.
  # Any other constant too (called directly): its two clusters' mean errors, from sums of
  # different sizes, differed by a rounding error, and half the map was called anomalous.
  errors = np.zeros((4, 32 * 32), np.float32)
  errors[1, :40] = 0.9  # and a map with a hot corner, for contrast
  errors[2], errors[3] = 0.3, 0.7
  out = kmeans_image.kmeans_image(errors, tumor_index=0.01)
  for i in (0, 2, 3):
    assert out.score[i] == 0.0 and not out.region[i].any() and out.prediction[i] == 0
    assert reference_loop.anomalous_share(errors[i], 32, 32) == 0.0
  assert out.score[1] > 0.0
  for value in (0.3, 0.7):  # 8 x 8: no coarse stage
    flat = np.full((1, 64), value, np.float32)
    assert kmeans_image.kmeans_image(flat, tumor_index=0.01, image_shape=(8, 8)).score[0] == 0.0


def test_clusters_with_exactly_equal_mean_errors_are_a_tie_not_a_rounding_error():
  # Maps of tenths (16 x 16: no coarse stage) where the two final clusters' mean errors are
  # equal as exact fractions, though their float32 centroids differ in the last bit: the
  # float32 order had called one half of the map anomalous, scikit-learn's float64 neither.
  rng = np.random.default_rng(9)
  for _ in range(4):  # the fourth draw of this generator holds such a map (its fifth image)
    n, side = int(rng.integers(4, 12)), int(rng.choice([4, 8, 16]))
    errors = (np.round(rng.random((n, side * side)).astype(np.float32) * 10) / 10).astype(
        np.float32)
  one = errors[4:5]
  _, second, centroids = kmeans_image.kmeans_image_clusters(one)
  members = [one[0][~second[0]], one[0][second[0]]]
  means = [sum(fractions.Fraction(float(v)) for v in m) / len(m) for m in members]
  assert side == 16 and means[0] == means[1]
  assert centroids[0, 0, 0] != centroids[0, 1, 0]  # (what the rule had compared)
  assert kmeans_image.kmeans_image_scores(one)[0] == 0.0
  assert reference_loop.anomalous_share(one[0], 16, 16) == 0.0


def test_bad_max_iter():
  with pytest.raises(ValueError, match='max_iter'):
    kmeans_image.kmeans_image_scores(np.zeros((1, 16), np.float32), max_iter=0)


def test_equidistant_pixels_join_the_first_cluster_like_sklearn():
  # Errors and positions in quarters: distances are exact, and many pixels lie exactly as far
  # from both centroids. scikit-learn puts them in the first cluster; so must the rule.
  rng = np.random.default_rng(0)
  errors = rng.choice([0.0, 0.25, 0.5, 1.0], size=(24, 16)).astype(np.float32)
  ours = kmeans_image.kmeans_image_scores(errors, image_shape=(4, 4))
  expected = [reference_loop.anomalous_share(row, 4, 4) for row in errors]
  np.testing.assert_array_equal(ours, expected)
