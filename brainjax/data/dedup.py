"""Near-duplicate detection by thumbnail correlation, flipped and rotated copies included.

Each image becomes a 32x32 thumbnail (a preprocessed slice area-averaged, a raw
file whole by PIL's antialiased bilinear resize: raw_thumbnail), z-scored and divided by
sqrt(1024), so that the dot product of two features is the Pearson correlation
of the thumbnails. Two images are linked if one correlates above a threshold
with the other under one of the square's eight symmetries (the identity, turns
by 90, 180 and 270 degrees, and the four flips). Groups are the connected
components of the links (single linkage).

Why the symmetries: Br35H holds copies of its slices flipped left-right, upside
down and turned by 180 degrees (correlation 0.9999 with the original once
flipped back), which a plain correlation misses; a slice correlates with its own
mirror image at 0.87-0.91 in the median (raw and preprocessed thumbnails), so
symmetric heads are not linked by it.

Measured on Br35H (3000 images; no group mixes labels), groups / images in
multi-image groups / largest group:
                                     > 0.995            > 0.98
  raw files' thumbnails (whole       619 / 2771 / 54    415 / 2824 / 77
    canvas)
  preprocessed 128x128 images        826 / 2585 / 54    449 / 2804 / 75
  either view (extra_views)          570 / 2791 / 54    373 / 2851 / 77
  either view, identity only         1447 / 2280 / 17   900 / 2722 / 38
(no pair there is linked by a 90-degree turn or a transpose alone, and turning the
preprocessed slices by 3 to 45 degrees links none across these groups). The views
disagree: preprocessed thumbnails miss copies that were re-cropped,
re-contrasted or sharpened differently; raw thumbnails miss copies placed on
another canvas. For leakage-safe splits link a pair if either view does
(sources.load_source gives the raw thumbnails, raw_thumbnail each).
"""
from typing import List, Sequence, Tuple

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


def _symmetries(features: np.ndarray) -> List[np.ndarray]:
  """The features of every thumbnail under each of the square's eight symmetries, the
  identity first (a z-scored thumbnail's pixels permuted are the permuted thumbnail's
  features)."""
  squares = features.reshape(-1, THUMB, THUMB)
  turns = [np.rot90(squares, k, axes=(1, 2)) for k in range(4)]
  flips = [np.swapaxes(turn, 1, 2) for turn in turns]
  return [np.ascontiguousarray(t.reshape(len(features), THUMB * THUMB)) for t in turns + flips]


def _linked_blocks(a: np.ndarray, b: np.ndarray, threshold: float, same: bool = False):
  """Yields (start, first, linked) per block of rows of a: linked[r, c] is whether
  a[start + r] . S(b[first + c]) > threshold for one of the symmetries S. first is 0, or
  start where b is a (`same`): the columns j >= start, as _linked_pairs needs."""
  transposed = [symmetry.T for symmetry in _symmetries(b)]
  for start in range(0, len(a), _BLOCK):
    block, first = a[start:start + _BLOCK], start if same else 0
    linked = np.zeros((len(block), len(b) - first), bool)
    for reference in transposed:
      linked |= block @ reference[:, first:] > threshold
    yield start, first, linked


def _linked_pairs(features: np.ndarray, threshold: float):
  """Index pairs (i, j), j > i, of linked features. They are every link: a[i] . S(a[j]) =
  a[j] . S'(a[i]) for the inverse S' of S, also one of the eight."""
  rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
  for start, first, linked in _linked_blocks(features, features, threshold, same=True):
    i, j = np.nonzero(linked)
    i, j = i + start, j + first
    rows.append(i[j > i])
    cols.append(j[j > i])
  return np.concatenate(rows), np.concatenate(cols)


def _check_threshold(threshold: float):
  if not -1.0 <= threshold < 1.0:
    raise ValueError(f'threshold is a correlation in [-1, 1), got {threshold}')


def near_duplicate_groups(images: np.ndarray, threshold: float = 0.98,
                          extra_views: Sequence[np.ndarray] = ()) -> np.ndarray:
  """int64 (N,) group id per image, ids 0..G-1.

  Images whose thumbnails correlate above `threshold`, one of them under one of the eight
  symmetries (directly or through a chain), share a group. `extra_views`: other renderings of
  the same N items (e.g. thumbnails of the raw files); a pair linked in any view is linked.
  """
  _check_threshold(threshold)
  n = len(images)
  rows, cols = [], []
  for view in (images, *extra_views):
    if len(view) != n:
      raise ValueError(f'every view needs {n} images, got {len(view)}')
    i, j = _linked_pairs(thumbnail_features(view), threshold)
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
  """bool (N_query,): whether each query has a near-duplicate among the references (flipped
  or rotated copies included, as near_duplicate_groups links them).

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
    for start, _, linked in _linked_blocks(query, reference, threshold):
      out[start:start + len(linked)] |= linked.any(axis=1)
  return out


def group_summary(groups: np.ndarray) -> dict:
  """Counts for logs and reports: images, groups (an image without a near-duplicate is one),
  groups of two or more images and the images in them, the largest group's size."""
  groups = np.asarray(groups)
  if groups.size == 0:
    return {'images': 0, 'groups': 0, 'shared_groups': 0, 'grouped_images': 0,
            'largest_group': 0}
  _, sizes = np.unique(groups, return_counts=True)  # any ids: negative, strings, hashes
  return {'images': int(groups.size), 'groups': int(len(sizes)),
          'shared_groups': int((sizes > 1).sum()), 'grouped_images': int(sizes[sizes > 1].sum()),
          'largest_group': int(sizes.max())}
