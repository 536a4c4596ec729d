"""Near-duplicate detection by thumbnail correlation.

Each image becomes a 32x32 thumbnail (area-averaged), z-scored and divided by
sqrt(1024), so that the dot product of two features is the Pearson correlation
of the thumbnails. Pairs above a threshold are linked and groups are the
connected components of that graph (single linkage).

Measured on Br35H (3000 images; no group mixes labels), groups / images in
multi-image groups / largest group:
                                     > 0.995            > 0.98
  raw files' thumbnails (whole       1564 / 2172 / 17   995 / 2675 / 38
    canvas)
  preprocessed 128x128 images        1721 / 1933 / 16   1122 / 2538 / 22
  either view (extra_views)          1454 / 2284 / 17   907 / 2719 / 38
The views disagree: preprocessed thumbnails miss copies that were re-cropped,
re-contrasted or sharpened differently; raw thumbnails miss copies placed on
another canvas. For leakage-safe splits link a pair if either view does
(sources.load_source gives the raw thumbnails, raw_thumbnail each).
"""
from typing import Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import sparse
from scipy.sparse import csgraph

THUMB = 32
_BLOCK = 1024  # rows of the correlation matrix computed at a time


def thumbnail_features(images: np.ndarray) -> np.ndarray:
  """(N, H, W[, 1]) images -> (N, 1024) float32 z-scored thumbnails / 32.

  A constant image gets an all-zero feature (correlation 0 with everything).
  """
  images = np.asarray(images, np.float32)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3:
    raise ValueError(f'expected (N, H, W) or (N, H, W, 1) images, got shape {images.shape}')
  n, h, w = images.shape
  if h % THUMB == 0 and w % THUMB == 0:  # exact area average, fast
    thumbs = images.reshape(n, THUMB, h // THUMB, THUMB, w // THUMB).mean(axis=(2, 4))
  else:
    thumbs = np.stack([
        np.asarray(Image.fromarray(im, mode='F').resize((THUMB, THUMB), Image.Resampling.BOX))
        for im in images]) if n else np.zeros((0, THUMB, THUMB), np.float32)
  flat = thumbs.reshape(n, THUMB * THUMB).astype(np.float32)
  flat = flat - flat.mean(axis=1, keepdims=True)
  std = flat.std(axis=1, keepdims=True)
  flat = np.where(std > 1e-8, flat / np.maximum(std, 1e-8), 0.0)
  return (flat / np.float32(THUMB)).astype(np.float32)


def _pairs_above(a: np.ndarray, b: np.ndarray, threshold: float, same: bool):
  """Index pairs (i, j) with a[i] . b[j] > threshold, blockwise (j > i if same)."""
  rows, cols = [], []
  for start in range(0, len(a), _BLOCK):
    corr = a[start:start + _BLOCK] @ b.T
    i, j = np.nonzero(corr > threshold)
    i = i + start
    if same:
      keep = j > i
      i, j = i[keep], j[keep]
    rows.append(i)
    cols.append(j)
  if not rows:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.concatenate(rows), np.concatenate(cols)


def _check_threshold(threshold: float):
  if not -1.0 <= threshold < 1.0:
    raise ValueError(f'threshold is a correlation in [-1, 1), got {threshold}')


def near_duplicate_groups(images: np.ndarray, threshold: float = 0.98,
                          extra_views: Sequence[np.ndarray] = ()) -> np.ndarray:
  """int64 (N,) group id per image, ids 0..G-1.

  Images whose thumbnails correlate above `threshold` (directly or through a
  chain) share a group. `extra_views`: other renderings of the same N items
  (e.g. thumbnails of the raw files); a pair linked in any view is linked.
  """
  _check_threshold(threshold)
  n = len(images)
  rows, cols = [], []
  for view in (images, *extra_views):
    if len(view) != n:
      raise ValueError(f'every view needs {n} images, got {len(view)}')
    features = thumbnail_features(view)
    i, j = _pairs_above(features, features, threshold, same=True)
    rows.append(i)
    cols.append(j)
  if n == 0:
    return np.zeros(0, np.int64)
  i, j = np.concatenate(rows), np.concatenate(cols)
  graph = sparse.coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
  _, groups = csgraph.connected_components(graph, directed=False)
  return groups.astype(np.int64)


def raw_thumbnail(image: np.ndarray) -> np.ndarray:
  """float32 (32, 32) of a whole raw image (H, W) float32 in [0, 1], canvas included: the
  second view of near_duplicate_groups' `extra_views` (see the module doc)."""
  thumb = Image.fromarray(image, mode='F').resize((THUMB, THUMB), Image.Resampling.BILINEAR)
  return np.asarray(thumb, np.float32)


def near_duplicates_of(query_images: np.ndarray, reference_images: np.ndarray,
                       threshold: float = 0.98,
                       extra_views: Sequence[Tuple[np.ndarray, np.ndarray]] = ()) -> np.ndarray:
  """bool (N_query,): whether each query has a near-duplicate among the references.

  `extra_views`: (query view, reference view) pairs, other renderings of the same items (e.g.
  raw_thumbnail of each file); a query linked in any view is a near-duplicate, as
  near_duplicate_groups links a pair.
  """
  _check_threshold(threshold)
  out = np.zeros(len(query_images), bool)
  for query_view, reference_view in ((query_images, reference_images), *extra_views):
    if len(query_view) != len(query_images) or len(reference_view) != len(reference_images):
      raise ValueError(f'every view needs {len(query_images)} queries and '
                       f'{len(reference_images)} references, got {len(query_view)} and '
                       f'{len(reference_view)}')
    query = thumbnail_features(query_view)
    reference = thumbnail_features(reference_view)
    if len(query) == 0 or len(reference) == 0:
      continue
    for start in range(0, len(query), _BLOCK):
      corr = query[start:start + _BLOCK] @ reference.T
      out[start:start + _BLOCK] |= (corr > threshold).any(axis=1)
  return out


def group_summary(groups: np.ndarray) -> dict:
  """Counts for logs and reports: images, groups, images in multi-image groups, largest."""
  groups = np.asarray(groups)
  if groups.size == 0:
    return {'images': 0, 'groups': 0, 'grouped_images': 0, 'largest_group': 0}
  _, sizes = np.unique(groups, return_counts=True)  # any ids: negative, strings, hashes
  return {'images': int(groups.size), 'groups': int(len(sizes)),
          'grouped_images': int(sizes[sizes > 1].sum()), 'largest_group': int(sizes.max())}
