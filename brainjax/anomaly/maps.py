"""A BrainCVAE's anomaly map and a rule's tumour region on a scan's own pixel grid, cut to
the head, and the overlay predict draws of them."""
import matplotlib
import numpy as np
from scipy import ndimage

from brainjax.data import preprocess as preprocess_lib

HEAD_LEVEL = 0.05  # preprocessed intensity above which a pixel belongs to the head
HEAD_PART_FRACTION = 0.2  # head parts smaller than this fraction of the largest are specks
OVERLAY_ALPHA = 0.6  # opacity of the map where it is 1
OUTLINE_RGB = (0, 255, 255)


def head_mask(image: np.ndarray) -> np.ndarray:
  """bool (S, S): the head in a preprocessed slice (its background is 0 by construction).

  Pixels above HEAD_LEVEL, closed (bridging thin dark gaps such as a T1 skull) and
  hole-filled; specks of background noise or text (parts under a fifth of the largest)
  are dropped.
  """
  inside = ndimage.binary_fill_holes(
      ndimage.binary_closing(np.asarray(image) > HEAD_LEVEL, iterations=2))
  labels, count = ndimage.label(inside)
  if count <= 1:
    return inside
  sizes = np.bincount(labels.ravel())[1:]
  keep = np.concatenate([[False], sizes >= HEAD_PART_FRACTION * sizes.max()])
  return keep[labels]


def original_grid_outputs(image: np.ndarray, errors: np.ndarray, region: np.ndarray,
                          info: preprocess_lib.CropInfo):
  """(map float32 (H, W), region bool (H, W)) of one slice, in its original file's grid.

  The map is the normalised error and the region the rule's, both cut to the head: the
  rules see the whole slice, but a tumour outside the head is not one.
  """
  size = image.shape[0]
  head = head_mask(image)
  error_map = np.where(head, errors.reshape(size, size), 0.0).astype(np.float32)
  head_orig = region_to_original(head, info)
  map_orig = preprocess_lib.to_original_grid(error_map, info)  # float32, in place below
  np.clip(map_orig, 0.0, 1.0, out=map_orig)
  map_orig[~head_orig] = 0.0
  region_orig = region_to_original(region.reshape(size, size) & head, info) & head_orig
  return map_orig, region_orig


def region_to_original(region: np.ndarray, info: preprocess_lib.CropInfo) -> np.ndarray:
  """A (S, S) binary region of a preprocessed slice -> bool (H, W) in the original grid."""
  return preprocess_lib.to_original_grid(np.asarray(region, np.float32), info) >= 0.5


_HEAT = matplotlib.colormaps['inferno'](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)


# Pixels blended at a time: a 64-megapixel scan's overlay took 3.5 GB of temporaries in one
# piece; in bands of about a million pixels, a few tens of MB.
_OVERLAY_BAND_PIXELS = 1 << 20


def outline(region: np.ndarray, width: int) -> np.ndarray:
  """bool: the region's pixels within `width` erosion steps of its edge (the image's edge is
  outside). Eroded within the region's bounding box, which gives the same pixels as the whole
  grid (beyond the box every pixel is outside) at a fraction of the work on a big scan."""
  edge = np.zeros_like(region, dtype=bool)
  rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
  if rows.size:
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    part = region[box]
    edge[box] = part & ~ndimage.binary_erosion(part, iterations=width, border_value=0)
  return edge


def overlay(scan: np.ndarray, map_: np.ndarray, region: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3): the scan in grey, the map as a heat colour, the region outlined."""
  h, w = scan.shape
  edge = outline(region, max(1, round(max(h, w) / 256)))
  out = np.empty((h, w, 3), np.uint8)
  band = max(1, _OVERLAY_BAND_PIXELS // max(w, 1))
  for top in range(0, h, band):
    rows = slice(top, top + band)
    m = np.clip(map_[rows], 0.0, 1.0)
    heat = _HEAT[(m * 255.0 + 0.5).astype(np.uint8)]  # a lookup table: fast on big scans
    alpha = (np.float32(OVERLAY_ALPHA) * m)[..., None]
    rgb = np.clip(scan[rows], 0.0, 1.0)[..., None] * (1.0 - alpha) + heat * alpha
    rgb[edge[rows]] = np.asarray(OUTLINE_RGB, np.float32) / 255.0
    out[rows] = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return out
