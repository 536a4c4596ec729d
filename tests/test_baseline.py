"""The nearest-neighbour baseline of Table 1."""
import numpy as np
import pytest

from brainjax.data import examples as examples_lib
from brainjax.evaluation import baseline


def _scenes(n, seed):
  coarse = np.random.default_rng(seed).uniform(size=(n, 8, 8)).astype(np.float32)
  return np.kron(coarse, np.ones((4, 4), np.float32))[..., None]  # (n, 32, 32, 1)


def test_each_test_slice_takes_its_nearest_training_slice_s_label():
  train = _scenes(6, seed=0)
  train_labels = np.array([1, 1, 1, 0, 0, 0])
  noise = np.random.default_rng(1).normal(0, 0.05, (4, 32, 32, 1)).astype(np.float32)
  test = train[[0, 4, 2, 5]] * 0.7 + 0.1 + noise  # copies, rescaled and noisy
  scores = baseline.nearest_neighbour_scores(train, train_labels, test)
  # The score is the best tumour correlation minus the best healthy one, of the thumbnails.
  correlation = np.corrcoef(test.reshape(4, -1), train.reshape(6, -1))[:4, 4:]
  expected = correlation[:, :3].max(axis=1) - correlation[:, 3:].max(axis=1)
  np.testing.assert_allclose(scores, expected, atol=1e-5)
  np.testing.assert_array_equal(scores >= 0, [True, False, True, False])
  metrics = baseline.nearest_neighbour_metrics(
      examples_lib.Examples(train, train_labels, np.arange(6).astype(str)),
      examples_lib.Examples(test, np.array([1, 0, 0, 0]), np.arange(4).astype(str)))
  # (slice 2 is labelled healthy here: the one error, a false positive)
  assert (metrics['tp'], metrics['fp'], metrics['tn'], metrics['fn']) == (1, 1, 2, 0)
  assert metrics['accuracy'] == 0.75
  # ROC AUC of the scores: the share of healthy slices the one tumour slice outscores.
  assert metrics['auroc'] == pytest.approx((expected[0] > expected[1:]).mean())


def test_a_training_set_of_one_class_is_refused():
  with pytest.raises(ValueError, match='both classes'):
    baseline.nearest_neighbour_scores(_scenes(3, seed=2), np.ones(3, int), _scenes(2, seed=3))
