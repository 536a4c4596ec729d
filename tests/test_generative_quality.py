"""Tests for brainjax.evaluation.generative_quality."""
import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from brainjax.evaluation import generative_quality as gq


def _with_exact_moments(rng, n, mean, cov):
  """n samples whose empirical mean and (ddof=1) covariance are exactly mean, cov."""
  d = len(mean)
  z = rng.normal(size=(n, d))
  z -= z.mean(axis=0)
  z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten
  return z @ np.linalg.cholesky(cov).T + mean


def test_frechet_zero_for_identical_sets():
  x = np.random.default_rng(0).normal(size=(200, 16))
  assert gq.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
  assert gq.frechet_distance(x, x.copy()[::-1]) == pytest.approx(0.0, abs=1e-8)


def test_frechet_matches_closed_form_for_diagonal_gaussians():
  rng = np.random.default_rng(1)
  d = 6
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  var1, var2 = rng.uniform(0.5, 3.0, d), rng.uniform(0.5, 3.0, d)
  x = _with_exact_moments(rng, 300, mu1, np.diag(var1))
  y = _with_exact_moments(rng, 250, mu2, np.diag(var2))
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  assert gq.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
  assert gq.frechet_distance(y, x) == pytest.approx(expected, rel=1e-9)


def test_frechet_matches_sqrtm_formula_for_full_covariances():
  rng = np.random.default_rng(2)
  d = 5
  a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  cov1, cov2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  x = _with_exact_moments(rng, 100, mu1, cov1)
  y = _with_exact_moments(rng, 120, mu2, cov2)
  cross = scipy.linalg.sqrtm(cov1 @ cov2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2.0 * cross)
  assert gq.frechet_distance(x, y) == pytest.approx(expected, rel=1e-8)


def test_frechet_fewer_samples_than_dimensions():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(10, 64)), rng.normal(size=(12, 64)) + 1.0
  assert gq.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
  fd = gq.frechet_distance(x, y)
  assert np.isfinite(fd) and fd > 64 * 0.9  # the mean shift alone contributes 64


def test_frechet_rejects_bad_input():
  x = np.zeros((5, 3))
  with pytest.raises(ValueError, match='dimensions differ'):
    gq.frechet_distance(x, np.zeros((5, 4)))
  with pytest.raises(ValueError, match='at least 2'):
    gq.frechet_distance(x, np.zeros((1, 3)))
  with pytest.raises(ValueError, match='NaN'):
    gq.frechet_distance(x, np.full((5, 3), np.nan))


def _brute_precision_recall(real, fake, k):
  def radii(x):
    return np.sort(cdist(x, x), axis=1)[:, k]
  prec = np.mean(np.any(cdist(fake, real) <= radii(real)[None, :], axis=1))
  rec = np.mean(np.any(cdist(real, fake) <= radii(fake)[None, :], axis=1))
  return prec, rec


def test_precision_recall_match_brute_force_with_small_blocks():
  rng = np.random.default_rng(4)
  real = rng.normal(size=(70, 5))
  fake = rng.normal(size=(53, 5)) * 1.5 + 0.5
  got = gq.knn_precision_recall(real, fake, k=3, block=16)
  prec, rec = _brute_precision_recall(real, fake, 3)
  assert got['precision'] == pytest.approx(prec)
  assert got['recall'] == pytest.approx(rec)
  assert 0.0 < got['precision'] < 1.0 and 0.0 < got['recall'] < 1.0


def test_precision_recall_match_brute_force_far_from_the_origin():
  rng = np.random.default_rng(7)
  base = rng.normal(size=(1, 32)) * 1e4
  real, fake = (base + 1e-3 * rng.normal(size=(60, 32)) for _ in range(2))
  got = gq.knn_precision_recall(real, fake, k=3)
  assert (got['precision'], got['recall']) == pytest.approx(_brute_precision_recall(real, fake, 3))


def test_precision_recall_identical_and_far_apart():
  real = np.random.default_rng(5).normal(size=(100, 8))
  assert gq.knn_precision_recall(real, real) == {'precision': 1.0, 'recall': 1.0}
  far = gq.knn_precision_recall(real, real + 100.0)
  assert far == {'precision': 0.0, 'recall': 0.0}


def test_precision_recall_mode_dropping():
  rng = np.random.default_rng(6)
  centres = np.array([[-10.0, 0.0], [10.0, 0.0]])
  real = rng.normal(size=(400, 2)) + centres[np.arange(400) % 2]
  fake = rng.normal(size=(400, 2)) + centres[0]  # only the first mode
  got = gq.knn_precision_recall(real, fake, k=3)
  assert got['precision'] > 0.9
  assert 0.4 < got['recall'] < 0.55


def test_precision_recall_rejects_bad_k():
  x = np.zeros((3, 2))
  with pytest.raises(ValueError, match='k must be'):
    gq.knn_precision_recall(x, x, k=0)
  with pytest.raises(ValueError, match='at least 4'):
    gq.knn_precision_recall(x, x, k=3)


def test_tumour_visibility_is_the_classifiers_call():
  # Positive where the log-odds is >= 0, as the classifier's metrics and predict call it: a
  # log-odds of -1e-9 is healthy there, though its float32 probability rounds to 0.5.
  assert gq.tumour_visibility(np.array([-2.0, 0.0, 3.0, -1e-9])) == pytest.approx(0.5)
  assert gq.tumour_visibility([40.0, 1.0]) == 1.0
  with pytest.raises(ValueError, match='NaN'):
    gq.tumour_visibility([0.2, np.nan])
  with pytest.raises(ValueError, match='non-empty'):
    gq.tumour_visibility([])


def test_precision_recall_balls_are_closed():
  # Each point repeated k + 1 times: every ball has radius 0, and holds the point itself (a
  # closed ball, as in the paper), so a set compared with itself scores 1, not 0.
  points = np.repeat(np.array([[0.0, 0.0], [3.0, 4.0]]), 4, axis=0)
  assert gq.knn_precision_recall(points, points, k=3) == {'precision': 1.0, 'recall': 1.0}
  assert gq.knn_precision_recall(points, points + 1.0, k=3) == {'precision': 0.0, 'recall': 0.0}
