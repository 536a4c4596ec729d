"""The embedded MRI phantom: determinism, variety, masks consistent with the image."""
import numpy as np
import pytest

from brainjax.data import phantom
from brainjax.data import preprocess


def _gray(image):
  return image[..., 0] if image.ndim == 3 else image


def test_deterministic_by_seed_index_and_class():
  a = phantom.phantom_slice(3, 5, True)
  b = phantom.phantom_slice(3, 5, True)
  np.testing.assert_array_equal(a.image, b.image)
  np.testing.assert_array_equal(a.mask, b.mask)
  for other in (phantom.phantom_slice(4, 5, True), phantom.phantom_slice(3, 6, True),
                phantom.phantom_slice(3, 5, False)):
    assert other.image.shape != a.image.shape or not np.array_equal(other.image, a.image)


def test_slices_are_raw_uint8_of_varied_size():
  shapes, channels = set(), set()
  for i in range(12):
    piece = phantom.phantom_slice(0, i, i % 2 == 0)
    assert piece.image.dtype == np.uint8 and piece.mask.dtype == np.uint8
    assert piece.mask.shape == piece.image.shape[:2]
    assert piece.image.ndim == 2 or (piece.image.ndim == 3 and piece.image.shape[2] == 3)
    shapes.add(piece.image.shape[:2])
    channels.add(piece.image.ndim)
  assert len(shapes) == 12 and channels == {2, 3}
  assert any(h != w for h, w in shapes)


def test_masks_empty_for_healthy_and_inside_the_head_for_tumours():
  for i in range(8):
    healthy = phantom.phantom_slice(1, i, False)
    assert healthy.mask.sum() == 0
    tumour = phantom.phantom_slice(1, i, True)
    assert tumour.mask.sum() > 0
    assert set(np.unique(tumour.mask)) <= {0, 1}
    image = _gray(tumour.image).astype(np.float32) / 255.0
    _, info = preprocess.preprocess(image)
    rows, cols = np.nonzero(tumour.mask)
    # Inside the head's box, away from the canvas edge, on bright (not background) pixels.
    assert rows.min() >= info.top and rows.max() < info.bottom
    assert cols.min() >= info.left and cols.max() < info.right
    background = np.median(np.concatenate([image[:3].ravel(), image[-3:].ravel()]))
    assert np.median(image[tumour.mask > 0]) > background + 0.1


def test_tumours_change_the_image_where_the_mask_is():
  """Lesions differ from healthy tissue in intensity (a CNN can see them)."""
  contrasts = []
  for i in range(10):
    piece = phantom.phantom_slice(2, i, True)
    image = _gray(piece.image).astype(np.float32)
    mask = piece.mask.astype(bool)
    ring = np.zeros_like(mask)
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    pad = max(r1 - r0, c1 - c0) // 2 + 3
    ring[max(0, r0 - pad):r1 + pad, max(0, c0 - pad):c1 + pad] = True
    ring &= ~mask & (image > 0.15 * image.max())
    contrasts.append(abs(np.mean(image[mask]) - np.mean(image[ring])) / 255.0)
  contrasts = np.array(contrasts)
  assert np.median(contrasts) > 0.04  # visible on average ...
  assert contrasts.max() > 1.5 * contrasts.min()  # ... but not uniformly so


def test_phantom_slice_refuses_a_negative_seed():
  with pytest.raises(ValueError, match='seed and index must be >= 0'):
    phantom.phantom_slice(-1, 0, True)


def test_every_slice_preprocesses():
  for i in range(10):
    out, _ = preprocess.preprocess(phantom.phantom_slice(9, i, i % 3 == 0).image)
    assert out.shape == (128, 128) and out.max() > 0.5


def test_a_tumour_slice_and_the_healthy_slice_of_its_index_are_different_scans():
  # (seed, index, class) seeds each slice: the two classes' slices of one index are not the
  # same head on the same canvas (near-copies across the classes), their canvases differ.
  same = [phantom.phantom_slice(0, i, True).image.shape[:2]
          == phantom.phantom_slice(0, i, False).image.shape[:2] for i in range(12)]
  assert sum(same) <= 1


def test_tumour_masks_stay_inside_the_brain():
  # The mask is clipped to the brain: scalp, skull and CSF lie between it and the head's
  # outline (here: at least 10% of the head's radius inside it, for every tumour pixel).
  from scipy import ndimage
  for i in range(16):
    piece = phantom.phantom_slice(1, i, True)
    image = _gray(piece.image).astype(np.float32)
    head = ndimage.binary_fill_holes(ndimage.gaussian_filter(image, 2) > 0.15 * image.max())
    labels, _ = ndimage.label(head)
    head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    depth = ndimage.distance_transform_edt(head)[piece.mask > 0]
    assert depth.min() > 0.1 * np.sqrt(head.sum() / np.pi), i


def test_the_mask_is_the_whole_lesion_edema_included():
  rng = np.random.default_rng(0)
  v, u = np.mgrid[-1:1:201j, -1:1:201j].astype(np.float32)
  lesion = dict(cu=0.0, cv=0.0, radius=0.2, extent=2.0)
  parts, mask = phantom._draw_lesions(rng, u, v, np.ones_like(u), [lesion])
  r = np.hypot(u, v)
  ring = (r > 0.26) & (r < 0.30)  # 1.3-1.5 radii: beyond the core, mostly edema
  assert parts['core'][ring].max() < 0.2
  assert mask[ring].mean() > 0.9
