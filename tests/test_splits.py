"""Split protocols: sizes, stratification, disjointness, grouping, determinism."""
import types

import ml_collections
import numpy as np
import pytest

from brainjax.data import dedup
from brainjax.data import splits
from brainjax.tasks import datasets


def _labels(healthy=100, tumour=100, seed=0):
  labels = np.array([0] * healthy + [1] * tumour)
  return np.random.default_rng(seed).permutation(labels)


def _check_partition(split, n):
  parts = [split.train, split.val, split.test]
  joined = np.concatenate(parts)
  assert len(joined) == n and len(np.unique(joined)) == n  # disjoint and covering
  for part in parts:
    assert part.dtype == np.int64 and np.all(np.diff(part) > 0)


def test_cnn_random_is_stratified_70_20_10():
  labels = _labels(150, 150)
  split = splits.cnn_split(labels, seed=0)
  _check_partition(split, 300)
  for part, size in zip(split, (105, 30, 15)):
    assert (labels[part] == 0).sum() == size and (labels[part] == 1).sum() == size


def test_anomaly_random_sizes():
  labels = _labels(200, 100)
  split = splits.anomaly_split(labels, seed=1)
  _check_partition(split, 300)
  healthy = [(labels[p] == 0).sum() for p in split]
  tumour = [(labels[p] == 1).sum() for p in split]
  assert healthy == [150, 20, 30] and tumour == [0, 40, 60]


def test_deterministic_by_seed():
  labels = _labels()
  a, b = splits.cnn_split(labels, seed=3), splits.cnn_split(labels, seed=3)
  c = splits.cnn_split(labels, seed=4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.test, c.test)


@pytest.mark.parametrize('protocol', ['cnn', 'anomaly'])
def test_grouped_keeps_groups_whole_and_sizes_close(protocol):
  rng = np.random.default_rng(0)
  sizes = rng.integers(1, 8, 120)
  groups = np.repeat(np.arange(120), sizes)
  group_labels = rng.integers(0, 2, 120)
  labels = group_labels[groups]
  split = splits.make_split(labels, protocol, 'grouped', seed=0, groups=groups)
  _check_partition(split, len(labels))
  where = np.empty(len(labels), int)
  for k, part in enumerate(split):
    where[part] = k
  for g in range(120):
    assert len(set(where[groups == g])) == 1  # a group never straddles splits
  n0, n1 = (labels == 0).sum(), (labels == 1).sum()
  if protocol == 'cnn':
    targets = [(0.7 * n0, 0.7 * n1), (0.2 * n0, 0.2 * n1), (0.1 * n0, 0.1 * n1)]
  else:
    targets = [(0.75 * n0, 0), (0.1 * n0, 0.4 * n1), (0.15 * n0, 0.6 * n1)]
  for part, (t0, t1) in zip(split, targets):
    assert abs((labels[part] == 0).sum() - t0) <= 8 and abs((labels[part] == 1).sum() - t1) <= 8


def test_mixed_groups_follow_the_majority_and_anomaly_train_stays_healthy():
  labels = np.array([0, 0, 1] * 30 + [0] * 60 + [1] * 60)
  groups = np.concatenate([np.repeat(np.arange(30), 3), np.arange(30, 150)])
  cnn = splits.cnn_split(labels, seed=0, groups=groups)
  _check_partition(cnn, len(labels))
  anomaly = splits.anomaly_split(labels, seed=0, groups=groups)
  _check_partition(anomaly, len(labels))
  assert (labels[anomaly.train] == 0).all()


def test_grouped_from_images_finds_copies():
  rng = np.random.default_rng(0)
  base = rng.uniform(size=(40, 8, 8)).astype(np.float32)
  images = np.kron(base, np.ones((4, 4), np.float32))[..., None]
  images = np.concatenate([images, images])  # each image twice
  labels = np.tile(rng.integers(0, 2, 40), 2)
  groups = dedup.near_duplicate_groups(images, 0.98)
  split = splits.make_split(labels, 'cnn', 'grouped', seed=0, groups=groups)
  _check_partition(split, 80)
  for part in split:
    ids = part % 40
    others = np.concatenate([p for p in split if p is not part]) % 40
    assert not set(ids) & set(others)


def test_errors():
  labels = _labels(10, 10)
  with pytest.raises(ValueError, match='protocol'):
    splits.make_split(labels, 'gan', 'random', 0)
  with pytest.raises(ValueError, match='mode'):
    splits.make_split(labels, 'cnn', 'shuffled', 0)
  with pytest.raises(ValueError, match='needs the near-duplicate groups'):
    splits.make_split(labels, 'cnn', 'grouped', 0)


@pytest.mark.parametrize('seed', range(5))
def test_cnn_grouped_stratifies_mixed_groups_by_their_majority(seed):
  # 10 mostly-healthy groups (0, 0, 1) and 10 mostly-tumour groups (0, 1, 1): stratified by
  # majority, each kind splits 7/2/1 on its own. Counted as tumour if any slice is (the
  # anomaly protocol's rule), all 20 would share one stratum and the kinds would mix freely.
  labels = np.array([0, 0, 1] * 10 + [0, 1, 1] * 10)
  groups = np.repeat(np.arange(20), 3)
  split = splits.cnn_split(labels, seed=seed, groups=groups)
  _check_partition(split, len(labels))
  for kind in (range(10), range(10, 20)):
    per_split = [len(np.intersect1d(np.unique(groups[part]), kind)) for part in split]
    assert per_split == [7, 2, 1], (seed, per_split)


def test_real_synthetic_and_mixed_runs_validate_and_test_on_the_same_real_slices(cache_dir):
  # Table 1 compares the variants' rows: only their training data may differ.
  from brainjax.tasks import datasets  # pylint: disable=g-import-not-at-top
  from configs import cnn_cls, cvae_cls  # pylint: disable=g-import-not-at-top
  for module, variants, protocol in ((cnn_cls, ('real', 'synthetic', 'mixed'), 'cnn'),
                                     (cvae_cls, ('real', 'synthetic', 'mixed'), 'anomaly')):
    sets = []
    for variant in variants:
      config = module.get_config(f'{variant},smoke')
      config.cache_dir = cache_dir
      assert config.train_data == variant
      parts = datasets.classifier_split(config, datasets.real_source(config), protocol)
      sets.append((parts.val.tolist(), parts.test.tolist()))
    assert sets[0][0] and sets[0][1] and sets.count(sets[0]) == len(sets), module.__name__


def test_grouped_split_sizes_average_their_fractions_over_seeds():
  # A group that straddles a split boundary goes where its midpoint falls, so on average over
  # seeds each split gets its fraction of the images (placed by its first image, the groups
  # straddling a boundary would always go to the earlier split: train 2-3 images too large).
  rng = np.random.default_rng(0)
  sizes = rng.integers(1, 8, 40)
  groups = np.repeat(np.arange(40), sizes)
  labels = np.zeros(len(groups), int)
  parts = np.array([[len(part) for part in splits.cnn_split(labels, seed, groups)]
                    for seed in range(300)])
  np.testing.assert_allclose(parts.mean(axis=0), np.array(splits.CNN_FRACTIONS) * len(labels),
                             atol=1.0)


def test_the_grouped_split_links_slices_by_their_raw_files_too():
  # The same head on one canvas, cropped differently: only the raw files' thumbnails match.
  rng = np.random.default_rng(0)
  raw = rng.random((4, 32, 32)).astype(np.float32)
  raw[1] = raw[0]
  source = types.SimpleNamespace(
      examples=types.SimpleNamespace(images=rng.random((4, 32, 32)).astype(np.float32)),
      raw_thumbnails=raw)
  groups = datasets.near_duplicate_groups(ml_collections.ConfigDict(dict(dedup_threshold=0.98)),
                                          source)
  assert groups[0] == groups[1] and len(np.unique(groups)) == 3


def test_grouped_split_is_pinned_for_a_seed():
  # Pinned: a seed's split decides which slices are tested on, and a run's checkpoints record
  # it (another split is other data to a rerun). A group whose midpoint lies on a boundary goes
  # to the later part (12 of 50 seeds differ otherwise).
  rng = np.random.default_rng(0)
  sizes = rng.integers(1, 5, 30)
  groups = np.repeat(np.arange(30), sizes)
  split = splits.cnn_split(np.zeros(len(groups), int), 1, groups)
  assert [len(p) for p in split] == [55, 18, 9]


def test_a_group_half_tumour_is_stratified_as_healthy():
  labels = np.array([0, 1] * 10 + [0] * 10 + [1] * 10)
  groups = np.r_[np.repeat(np.arange(10), 2), np.arange(10, 30)]
  # A group of one healthy and one tumour slice is stratified with the healthy ones.
  split = splits.cnn_split(labels, 0, groups)
  assert [int(labels[p].sum()) for p in split] == [14, 4, 2]
