"""Tests for brainjax.evaluation.privacy."""
import numpy as np
from PIL import Image
import pytest
from scipy.spatial.distance import cdist

from brainjax.evaluation import privacy


def test_dcr_matches_brute_force():
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(37, 3, 4)).astype(np.float32)  # flattened to D = 12
  references = rng.normal(size=(29, 3, 4)).astype(np.float32)
  distances, indices = privacy.distance_to_closest_record(queries, references, block=8)
  full = cdist(queries.reshape(37, -1).astype(np.float64),
               references.reshape(29, -1).astype(np.float64))
  np.testing.assert_array_equal(indices, full.argmin(axis=1))
  np.testing.assert_allclose(distances, full.min(axis=1), rtol=1e-12)
  assert distances.shape == (37,) and indices.dtype == np.int64


def test_dcr_is_exact_for_near_copies():
  rng = np.random.default_rng(1)
  references = rng.uniform(size=(20, 4096)) * 100.0  # large norms, tiny offsets
  queries = references[[3, 7]] + 1e-6 * rng.normal(size=(2, 4096))
  distances, indices = privacy.distance_to_closest_record(queries, references)
  np.testing.assert_array_equal(indices, [3, 7])
  expected = np.linalg.norm(queries - references[[3, 7]], axis=1)
  np.testing.assert_allclose(distances, expected, rtol=1e-12)


def test_dcr_finds_the_nearest_record_under_a_large_common_offset():
  # Features far from the origin with small gaps between them: the distance expansion
  # must not round the gaps away (it picked the wrong record for a quarter of these).
  rng = np.random.default_rng(2)
  base = rng.normal(size=(1, 64)) * 1e3
  references = base + 1e-5 * rng.normal(size=(200, 64))
  queries = base + 1e-5 * rng.normal(size=(100, 64))
  _, indices = privacy.distance_to_closest_record(queries, references)
  np.testing.assert_array_equal(indices, cdist(queries, references).argmin(axis=1))


@pytest.mark.parametrize('block', [1, 2, 3])
def test_an_exact_copy_beats_a_near_copy_the_expansion_ranks_first(block):
  # 0-255 pixels: the expansion's rounding (~1e-16 |q|^2) exceeds a 1e-4 gap, and it had
  # picked the near-copy for 47 of 200 such queries, reporting a copy at a non-zero DCR.
  rng = np.random.default_rng(0)
  misses = 0
  for t in range(50):
    a = rng.random(4096) * 255
    near = a.copy()
    near[rng.integers(4096)] += 1e-4
    references = np.stack([near, a, -a]) if t % 2 else np.stack([a, near, -a])
    distances, indices = privacy.distance_to_closest_record(a[None], references, block)
    misses += (distances[0], indices[0]) != (0.0, t % 2)
  assert misses == 0


def test_many_equally_near_references_keep_the_lowest_index():
  references = np.tile(np.arange(64.0), (3000, 1))  # one row, 3000 times: all candidates
  distances, indices = privacy.distance_to_closest_record(references[:5] + 0.5, references, 1024)
  np.testing.assert_array_equal(indices, 0)
  np.testing.assert_allclose(distances, 4.0)  # sqrt(64 * 0.25)


def test_dcr_ties_go_to_the_lowest_reference_index_across_blocks():
  references = np.array([[1.0], [-1.0], [3.0], [1.0]])  # 0, 1 and 3 all at distance 1 from 0
  for block in (1, 2, 4):
    distances, indices = privacy.distance_to_closest_record(np.zeros((1, 1)), references, block)
    assert (distances[0], indices[0]) == (1.0, 0), block


def test_dcr_rejects_mismatched_dimensions():
  with pytest.raises(ValueError, match='dimensions differ'):
    privacy.distance_to_closest_record(np.zeros((2, 3)), np.zeros((2, 4)))
  with pytest.raises(ValueError, match='non-empty'):
    privacy.distance_to_closest_record(np.zeros((0, 3)), np.zeros((2, 3)))


def test_audit_flags_copies_of_training_data():
  rng = np.random.default_rng(2)
  train = rng.normal(size=(300, 16))
  holdout = rng.normal(size=(300, 16))
  copied = rng.choice(300, size=200)
  synthetic = train[copied] + 0.01 * rng.normal(size=(200, 16))
  audit = privacy.privacy_audit(synthetic, train, holdout, num_worst=5)
  assert audit['memorisation_rate'] > 0.95
  assert audit['median_synthetic_dcr'] < 0.1 * audit['median_holdout_dcr']
  np.testing.assert_array_equal(audit['synthetic_nearest'], copied)
  worst = audit['worst_pairs']
  assert worst.shape == (5, 2)
  np.testing.assert_array_equal(worst[:, 1], copied[worst[:, 0]])
  assert np.all(np.diff(audit['worst_distances']) >= 0)
  assert audit['worst_distances'][-1] <= np.sort(audit['synthetic_dcr'])[5]


def test_nearest_record_rows_name_each_synthetic_slice_s_nearest_training_slice():
  rng = np.random.default_rng(3)
  train, holdout = rng.normal(size=(50, 8)), rng.normal(size=(40, 8))
  synthetic = np.concatenate([train[[7, 3]], rng.normal(size=(5, 8))])  # two copies first
  audits = {'pixel': privacy.privacy_audit(synthetic, train, holdout),
            'feature': privacy.privacy_audit(2 * synthetic, 2 * train, 2 * holdout)}
  train_ids = np.array([f'yes/t{i}.jpg' for i in range(50)])
  rows = privacy.nearest_record_rows([f's{i}.png' for i in range(7)], train_ids, audits)
  assert [r['synthetic'] for r in rows] == [f's{i}.png' for i in range(7)]
  assert rows[0]['pixel_nearest_training'] == 'yes/t7.jpg' and rows[0]['pixel_distance'] == 0
  assert rows[1]['feature_nearest_training'] == 'yes/t3.jpg'
  for space, audit in audits.items():
    flagged = [r[f'{space}_flagged'] for r in rows]
    assert flagged[:2] == [1, 1] and np.mean(flagged) == audit['memorisation_rate']
    assert [r[f'{space}_nearest_training'] for r in rows] == list(
        train_ids[audit['synthetic_nearest']])
    np.testing.assert_array_equal([r[f'{space}_distance'] for r in rows], audit['synthetic_dcr'])
  with pytest.raises(ValueError, match='7 synthetic slices, ids 6'):
    privacy.nearest_record_rows([f's{i}.png' for i in range(6)], train_ids, audits)


def test_a_copier_is_flagged_when_the_holdout_shares_copies_with_train():
  # A random split of data with duplicates (Br35H) puts copies of training slices in the
  # holdout: 6% of it here, which makes the 5% threshold exactly 0.
  rng = np.random.default_rng(5)
  train = rng.random((100, 8, 8, 1))
  holdout = np.concatenate([train[:6], rng.random((94, 8, 8, 1))])
  audit = privacy.privacy_audit(train[:50], train, holdout)
  assert audit['threshold'] == 0.0
  assert audit['memorisation_rate'] == 1.0


def test_audit_independent_generator_is_near_nominal_rate():
  rng = np.random.default_rng(3)
  train, holdout, synthetic = (rng.normal(size=(n, 16)) for n in (400, 1000, 1000))
  audit = privacy.privacy_audit(synthetic, train, holdout, quantile=0.05)
  assert audit['nominal_rate'] == pytest.approx(0.05)
  assert 0.02 < audit['memorisation_rate'] < 0.09
  assert audit['median_synthetic_dcr'] == pytest.approx(audit['median_holdout_dcr'], rel=0.1)


@pytest.mark.parametrize('num_holdout, nominal', [(10, 1 / 11), (20, 0.05), (50, 0.05)])
def test_a_copy_free_generator_averages_the_nominal_rate_on_a_small_holdout(num_holdout,
                                                                             nominal):
  # The study's holdout is one class's test slices (50 in study.py:quick): the threshold
  # must not assume a large one (numpy's default quantile expected 6.8% at 50, 13% at 10).
  rng = np.random.default_rng(5)
  rates = []
  for _ in range(400):
    train, holdout, synthetic = (rng.normal(size=(n, 4)) for n in (100, num_holdout, 200))
    audit = privacy.privacy_audit(synthetic, train, holdout)
    rates.append(audit['memorisation_rate'])
  assert audit['nominal_rate'] == pytest.approx(nominal)
  assert np.mean(rates) == pytest.approx(nominal, abs=0.01)


def test_audit_rejects_mismatched_inputs():
  x = np.zeros((4, 3))
  with pytest.raises(ValueError, match='dimensions differ'):
    privacy.privacy_audit(x, x, np.zeros((4, 5)))
  with pytest.raises(ValueError, match='quantile'):
    privacy.privacy_audit(x, x, x, quantile=1.0)


def test_worst_pairs_figure_writes_png(tmp_path):
  rng = np.random.default_rng(4)
  synthetic = rng.uniform(size=(5, 16, 16, 1)).astype(np.float32)
  train = rng.uniform(size=(6, 16, 16, 1)).astype(np.float32)
  path = tmp_path / 'worst.png'
  privacy.worst_pairs_figure(synthetic, train, np.array([[0, 5], [4, 1]]), path,
                             distances=[0.5, 1.25])
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  with Image.open(path) as png:
    assert np.asarray(png.convert('L')).std() > 10  # (drawn, not a blank canvas)
  with pytest.raises(ValueError, match='out of range'):
    privacy.worst_pairs_figure(synthetic, train, np.array([[5, 0]]), tmp_path / 'bad.png')


@pytest.mark.parametrize('num_worst', [-1, -5])
def test_a_negative_num_worst_is_refused(num_worst):
  rng = np.random.default_rng(0)
  data = [rng.normal(size=(6, 4)) for _ in range(3)]
  with pytest.raises(ValueError, match='num_worst'):
    privacy.privacy_audit(*data, num_worst=num_worst)
