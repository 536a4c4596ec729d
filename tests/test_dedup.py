"""Near-duplicate grouping by thumbnail correlation."""
import numpy as np
import pytest

from brainjax.data import dedup


def _scenes(n, size=64, seed=0):
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(size=(n, 8, 8)).astype(np.float32)
  return np.kron(coarse, np.ones((size // 8, size // 8), np.float32))[..., None]


def test_features_are_unit_norm_correlations():
  images = _scenes(5)
  features = dedup.thumbnail_features(images)
  assert features.shape == (5, 1024) and features.dtype == np.float32
  np.testing.assert_allclose((features ** 2).sum(1), 1.0, atol=1e-4)
  thumbs = images[..., 0].reshape(5, 32, 2, 32, 2).mean((2, 4)).reshape(5, -1)
  np.testing.assert_allclose(features @ features.T, np.corrcoef(thumbs), atol=1e-4)
  assert not dedup.thumbnail_features(np.ones((1, 64, 64, 1))).any()  # constant image
  # Sizes that are not multiples of 32 work too.
  assert dedup.thumbnail_features(np.random.rand(2, 50, 70).astype(np.float32)).shape == (2, 1024)


def test_groups_link_copies_transitively():
  base = _scenes(4)
  rng = np.random.default_rng(1)
  noisy = base[[0, 0, 2]] + rng.normal(0, 0.01, base[[0, 0, 2]].shape).astype(np.float32)
  brighter = base[[2]] * 0.8 + 0.1  # a linear intensity change is still a duplicate
  images = np.concatenate([base, noisy, brighter])  # 0,4,5 copies; 2,6,7 copies
  groups = dedup.near_duplicate_groups(images, threshold=0.98)
  assert groups.shape == (8,)
  assert len({groups[0], groups[4], groups[5]}) == 1
  assert len({groups[2], groups[6], groups[7]}) == 1
  assert len(set(groups[[0, 1, 2, 3]])) == 4
  assert dedup.group_summary(groups) == {'images': 8, 'groups': 4, 'shared_groups': 2,
                                         'grouped_images': 6, 'largest_group': 3}
  # A user's own group ids (make_split takes any) are counted too, not only small integers.
  named = np.array([f'g{g}' for g in groups])
  assert dedup.group_summary(named) == dedup.group_summary(groups - 100)
  assert dedup.group_summary(named) == dedup.group_summary(groups)
  # A stricter threshold never merges more.
  assert len(np.unique(dedup.near_duplicate_groups(images, 0.9999))) >= 4


def test_extra_views_union_links():
  images = _scenes(3)
  other = images.copy()
  other[2] = other[0]  # another view says 0 and 2 are copies
  groups = dedup.near_duplicate_groups(images, 0.98, extra_views=[other])
  assert groups[0] == groups[2] != groups[1]
  with pytest.raises(ValueError, match='every view'):
    dedup.near_duplicate_groups(images, 0.98, extra_views=[other[:2]])


def test_near_duplicates_of_reference():
  reference = _scenes(6, seed=3)
  query = np.concatenate([reference[[1, 4]] * 0.9, _scenes(3, seed=4)])
  found = dedup.near_duplicates_of(query, reference, threshold=0.98)
  np.testing.assert_array_equal(found, [True, True, False, False, False])
  assert dedup.near_duplicates_of(query, reference[:0], 0.98).sum() == 0
  with pytest.raises(ValueError, match='threshold'):
    dedup.near_duplicates_of(query, reference, 1.5)
  # A query linked in another view (e.g. raw-file thumbnails) is a near-duplicate too.
  query_view, reference_view = _scenes(5, seed=5), _scenes(6, seed=6)
  query_view[2] = reference_view[0]
  found = dedup.near_duplicates_of(query, reference, 0.98,
                                   extra_views=[(query_view, reference_view)])
  np.testing.assert_array_equal(found, [True, True, True, False, False])
  with pytest.raises(ValueError, match='every view'):
    dedup.near_duplicates_of(query, reference, 0.98, extra_views=[(query_view[:2], reference_view)])


@pytest.mark.parametrize('turns', range(4))
@pytest.mark.parametrize('transpose', [False, True])
def test_flipped_and_rotated_copies_are_near_duplicates(turns, transpose):
  # Br35H holds copies flipped left-right, upside down and turned by 180 degrees; any of the
  # square's eight symmetries (here: turns by 90 degrees, then a transpose) links a copy.
  images = _scenes(5, seed=9)[..., 0]
  copy = np.rot90(images[3], turns)
  copy = (copy.T if transpose else copy) * 0.9 + 0.05
  groups = dedup.near_duplicate_groups(np.concatenate([images, copy[None]])[..., None], 0.98)
  assert groups[5] == groups[3] and len(set(groups[:5])) == 5
  found = dedup.near_duplicates_of(np.stack([copy, _scenes(1, seed=10)[0, ..., 0]]), images, 0.98)
  np.testing.assert_array_equal(found, [True, False])
  # In an extra view alone, as the raw files' thumbnails.
  groups = dedup.near_duplicate_groups(_scenes(6, seed=11), 0.98,
                                       extra_views=[np.concatenate([images, copy[None]])])
  assert groups[5] == groups[3] and len(set(groups[:5])) == 5


def test_a_symmetric_image_is_not_a_copy_of_another():
  # An image equal to its own mirror image links to nothing else through its symmetries.
  images = _scenes(4, seed=12)[..., 0]
  images[0] = images[0] + images[0][:, ::-1]
  groups = dedup.near_duplicate_groups(images, 0.98)
  assert len(set(groups)) == 4


def test_a_flipped_copy_in_a_later_block_is_linked(monkeypatch):
  monkeypatch.setattr(dedup, '_BLOCK', 4)
  images = _scenes(10, seed=13)
  images[9] = images[2][::-1]  # upside down, two blocks later
  groups = dedup.near_duplicate_groups(images, 0.98)
  assert groups[9] == groups[2] and len(set(groups)) == 9
  query = images[[2]][:, :, ::-1]
  np.testing.assert_array_equal(dedup.near_duplicates_of(query, images[3:], 0.98), [True])


def test_blockwise_matches_direct_on_many_images(monkeypatch):
  images = np.concatenate([_scenes(300, size=32, seed=5)] * 2)  # every image twice
  monkeypatch.setattr(dedup, '_BLOCK', 64)
  groups = dedup.near_duplicate_groups(images, 0.98)
  np.testing.assert_array_equal(groups[:300], groups[300:])
  assert len(np.unique(groups)) == 300


def test_a_copy_past_the_first_block_of_references_is_found(monkeypatch):
  monkeypatch.setattr(dedup, '_BLOCK', 4)
  reference = _scenes(10, seed=7)
  query = np.concatenate([reference[[9]], _scenes(1, seed=8)])
  np.testing.assert_array_equal(dedup.near_duplicates_of(query, reference, 0.98), [True, False])


def test_a_threshold_of_1_is_refused():
  # No correlation exceeds 1: such a threshold would silently group nothing.
  images = _scenes(3)
  with pytest.raises(ValueError, match='threshold'):
    dedup.near_duplicate_groups(images, 1.0)
  with pytest.raises(ValueError, match='threshold'):
    dedup.near_duplicates_of(images, images, 1.0)
  assert list(dedup.near_duplicate_groups(images, -1.0)) == [0, 0, 0]  # (the lowest allowed)
