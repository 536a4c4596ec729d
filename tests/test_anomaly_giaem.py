"""GIAEM on hand-made error maps and its all-thresholds-at-once scores."""
import numpy as np
import pytest

from brainjax.anomaly import giaem, pixel_features


def test_hand_made_maps():
  errors = np.array([[0.0, 0.2, 0.5, 1.0],   # 2 of 4 pixels >= 0.5
                     [0.1, 0.1, 0.1, 1.0],   # 1 of 4
                     [0.5, 0.5, 0.5, 0.5]],  # 4 of 4 (equal to the threshold counts)
                    np.float32)
  out = giaem.giaem(errors, anomaly_threshold=0.5, tumor_index=0.5)
  np.testing.assert_array_equal(out.score, [0.5, 0.25, 1.0])
  np.testing.assert_array_equal(out.prediction, [1, 0, 1])
  np.testing.assert_array_equal(out.region[0], [False, False, True, True])
  assert out.prediction.dtype == np.int32


def test_grid_scores_equal_the_rule_at_every_threshold():
  rng = np.random.default_rng(0)
  errors = (rng.random((7, 64)) ** 2).astype(np.float32)
  errors[0, :5] = 0.25  # values exactly on a threshold
  thresholds = np.array([0.0, 0.1, 0.25, 0.3, 0.7, 0.99], np.float32)
  grid = giaem.giaem_grid_scores(errors, thresholds)
  for k, t in enumerate(thresholds):
    np.testing.assert_array_equal(grid[:, k], giaem.giaem(errors, t, 0.5).score)


def test_threshold_codes_exact_for_uniform_and_irregular_grids():
  rng = np.random.default_rng(1)
  errors = rng.random((5, 300)).astype(np.float32)
  for grid in [(np.arange(100) / 100).astype(np.float32),
               (np.arange(7) / 7).astype(np.float32),
               (0.2 + np.arange(50) / 100).astype(np.float32),  # errors below and above it
               np.geomspace(0.001, 0.9, 37).astype(np.float32)]:
    errors[0, :grid.size] = grid  # exact hits and their float32 neighbours
    errors[1, :grid.size] = np.nextafter(grid, np.float32(-1))
    errors[2, :grid.size] = np.nextafter(grid, np.float32(2))
    codes = pixel_features.threshold_codes(errors, grid)
    np.testing.assert_array_equal(codes, np.searchsorted(grid, errors, side='right'))
    sub = grid[::3]
    np.testing.assert_array_equal(pixel_features.remap_codes(codes, grid, sub),
                                  np.searchsorted(sub, errors, side='right'))
  assert pixel_features.remap_codes(codes, grid, np.array([0.123], np.float32)) is None
  assert pixel_features.threshold_codes(np.zeros((0, 300), np.float32), grid).shape == (0, 300)



@pytest.mark.parametrize('num', [255, 256, 65535, 65536, 70000])
def test_threshold_codes_hold_every_count_of_thresholds(num):
  grid = (np.arange(num) / num).astype(np.float32)
  errors = np.array([[0.0, 0.5, 0.99, 1.0]], np.float32)
  codes = pixel_features.threshold_codes(errors, grid)  # (uint16 wrapped 70000 to 4464)
  np.testing.assert_array_equal(codes, np.searchsorted(grid, errors, side='right'))
  np.testing.assert_array_equal(pixel_features.remap_codes(codes, grid, grid), codes)

@pytest.mark.parametrize('errors, message', [
    (np.zeros((2, 2, 2)), r'\(N, H\*W\)'),
    (np.full((2, 4), 1.5), r'\[0, 1\]'),
    (np.full((2, 4), np.nan), r'\[0, 1\]'),
    (np.array([[0.2, np.nan, 0.5, 0.1]]), r'\[0, 1\]'),  # one NaN among valid errors
    (np.array([[0.2, np.inf, 0.5, 0.1]]), r'\[0, 1\]'),
    (np.array([[0.2, -np.inf, 0.5, 0.1]]), r'\[0, 1\]'),
])
def test_bad_errors(errors, message):
  with pytest.raises(ValueError, match=message):
    giaem.giaem(errors, 0.5, 0.5)


def test_bad_grid():
  with pytest.raises(ValueError, match='increasing'):
    giaem.giaem_grid_scores(np.zeros((2, 4), np.float32), [0.5, 0.2])


@pytest.mark.parametrize('shape', [(5, 7), (1, 16), (4, 1), (0, 3)])
def test_nonzero_2d_equals_np_nonzero(shape):
  mask = np.random.default_rng(2).random(shape) < 0.4
  got, want = pixel_features.nonzero_2d(mask), np.nonzero(mask)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
    assert g.dtype == w.dtype


def test_a_pixel_exactly_at_the_float32_threshold_is_anomalous_as_in_the_grid_search():
  errors = np.array([[0.7, 0.1, 0.3, 0.0]], np.float32)  # float32(0.7) < 0.7 in float64
  out = giaem.giaem(errors, 0.7, 0.25)
  assert out.region[0].tolist() == [True, False, False, False]
  assert out.score[0] == 0.25 and out.prediction[0] == 1
  assert giaem.giaem_grid_scores(errors, [0.3, 0.7])[0].tolist() == [0.5, 0.25]
