"""DBSCAN on the anomalous pixels of each error map (study rule 2), exact and fast.

Rule. Per image, the points are the pixels with error >= anomaly_threshold
(clustering every pixel would make the low-error background one giant cluster),
with features (error, row / H, col / W) (see pixel_features). DBSCAN(eps,
min_samples) as in scikit-learn: a point is core if at least min_samples points
(itself included) lie within Euclidean distance eps; clusters are the connected
components of cores; a non-core point within eps of a core is a border point of
that core's cluster. Image score: the largest cluster's size / (H * W); tumour if
score >= tumor_index.

Why it is fast. Two pixels within eps in feature space are within eps in
position, so every neighbour of pixel (i, j) lies in the window |di| <= eps*H,
|dj| <= eps*W. One jitted gather over (candidate pixels of a chunk of images) x
(half-window offsets) finds all neighbour pairs; only the few pairs within eps
are kept (3-17% of the window on CVAE-like maps), and everything per (eps,
min_samples) is linear in them: neighbour counts by bincount, clusters by scipy's
linear-time connected components of the core-core pairs, border points by a
minimum over their core neighbours. The pairs at the lowest threshold and the
largest eps serve every grid point (a higher threshold keeps a subset of the
pixels, a smaller eps a subset of the pairs).

Exactness. The kept pairs' distances are recomputed in float64 (float32 only
pre-selects, with a 1e-5 relative margin far above its rounding), so the
neighbour relation is scikit-learn's (float64 squared distance <= eps**2;
scikit-learn compares the distance with eps, so only exact ties at distance eps
could differ). Clusters are numbered per image in the order of their
lowest core pixel index (row-major), and a border point touching several clusters
joins the lowest-numbered one; that is what scikit-learn's expansion order gives
for points passed in row-major order, so labels match it exactly, border points
included.
"""
from typing import Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from brainjax import threads
from brainjax.anomaly import pixel_features

# Upper bounds on the candidate pixels clustered at once, and on them times the half window
# (the (K, O) arrays of _neighbours): the second binds only for eps above the default grid's.
_MAX_CANDIDATES_PER_CHUNK = 200_000
_MAX_WINDOW_ENTRIES_PER_CHUNK = 1 << 22
# Relative margin on eps**2 of the float32 pre-selection of pairs (rechecked in float64).
_BAND = 1e-5


def window_offsets(eps: float, h: int, w: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pixel offsets (di, dj) != (0, 0) whose position distance alone is <= eps.

  Row-major order, so the second half of the offsets is the mirror image of the
  first (each unordered pair of pixels is linked once by the second half).
  Returns di, dj (int) and their squared feature-space distance s2 (float64).
  """
  ri, rj = int(np.ceil(eps * h)), int(np.ceil(eps * w))
  di, dj = np.meshgrid(np.arange(-ri, ri + 1), np.arange(-rj, rj + 1), indexing='ij')
  di, dj = di.reshape(-1), dj.reshape(-1)
  s2 = (di / h) ** 2 + (dj / w) ** 2
  keep = ((di != 0) | (dj != 0)) & (s2 <= eps * eps)
  return di[keep], dj[keep], s2[keep]


def _image_chunks(candidate_counts: np.ndarray, eps: float, h: int, w: int) -> Iterator[slice]:
  """Consecutive image ranges holding at most _MAX_CANDIDATES_PER_CHUNK candidates, and at most
  _MAX_WINDOW_ENTRIES_PER_CHUNK candidates x half-window offsets at this eps (or one image)."""
  half_window = window_offsets(eps, h, w)[2].size // 2 + 1
  limit = min(_MAX_CANDIDATES_PER_CHUNK, _MAX_WINDOW_ENTRIES_PER_CHUNK // half_window)
  start, total = 0, 0
  for i, count in enumerate(candidate_counts):
    if i > start and total + count > limit:
      yield slice(start, i)
      start, total = i, 0
    total += count
  if start < len(candidate_counts):
    yield slice(start, len(candidate_counts))


@jax.jit
def _neighbours(index, flat, value, offsets, s2, d2_max):
  """(K, O): each candidate's neighbour at each offset (-1: none or farther than
  eps_max in float32, with a margin) and the float32 squared distance."""
  nbr = index[flat[:, None] + offsets[None, :]]
  nbr = jax.lax.optimization_barrier(nbr)  # gather once, not once per consumer
  d2 = (value[:, None] - value[jnp.maximum(nbr, 0)]) ** 2 + s2[None, :]
  return jnp.where((nbr >= 0) & (d2 <= d2_max), nbr, -1)


def _bucket(size: int, step: int = 1 << 16) -> int:
  """Padded array length: few distinct shapes, so few compilations."""
  if size <= step:
    return max(4096, 1 << int(np.ceil(np.log2(max(size, 1)))))
  return -(-size // step) * step


class _Candidates:
  """The anomalous pixels of a chunk of images and their neighbour pairs within eps_max.

  The window gather runs in JAX over a padded (K, O) array (O: the half window,
  so each unordered pair once; padding rows look up an all-empty block of the
  index map); the pairs it keeps (float32 distance within eps_max plus a margin)
  are compacted on the host and their distances recomputed in float64, so the
  neighbour relation is decided exactly as in float64.
  """

  def __init__(self, errors: np.ndarray, threshold: np.float32, eps_max: float, h: int, w: int):
    n = len(errors)
    self.image, self.pixel = pixel_features.nonzero_2d(errors >= threshold)  # row-major
    self.size = self.image.size
    self.value = errors[self.image, self.pixel]
    di, dj, s2 = window_offsets(eps_max, h, w)
    half = s2.size // 2  # offsets [half:] come after (0, 0): each pair once
    di, dj, s2 = di[half:], dj[half:], s2[half:]
    if not s2.size or not self.size:  # eps below one pixel step, or nothing to cluster
      self.first = self.second = np.zeros(0, np.int32)
      self.dist2 = np.zeros(0)
      return
    # Index of each candidate in an (n + 1, h + 2 ri, w + 2 rj) map, -1 elsewhere,
    # so a shifted lookup never leaves its image; block n is the empty one.
    ri, rj = int(np.abs(di).max()), int(np.abs(dj).max())
    hp, wp = h + 2 * ri, w + 2 * rj
    row, col = np.divmod(self.pixel, w)
    padded = _bucket(self.size)
    flat = np.full(padded, (n * hp + ri) * wp + rj, np.int32)
    flat[:self.size] = (self.image * hp + row + ri) * wp + (col + rj)
    index = np.full(_bucket((n + 1) * hp * wp, 1 << 20), -1, np.int32)
    index[flat[:self.size]] = np.arange(self.size, dtype=np.int32)
    value = np.zeros(padded, np.float32)
    value[:self.size] = self.value
    d2_max = np.float32(eps_max * eps_max) * np.float32(1 + _BAND)
    nbr = np.asarray(_neighbours(index, flat, value, (di * wp + dj).astype(np.int32),
                                 s2.astype(np.float32), d2_max))[:self.size]
    found = np.flatnonzero(nbr >= 0)  # one pass; cheaper than a 2-D nonzero
    first, offset = np.divmod(found, s2.size)
    second = nbr.reshape(-1)[found]
    value64 = self.value.astype(np.float64)
    dist2 = (value64[first] - value64[second]) ** 2 + s2[offset]
    keep = dist2 <= eps_max * eps_max
    # int32 indices: half the memory traffic, and what SciPy's graph code takes.
    self.first, self.second, self.dist2 = first[keep].astype(np.int32), second[keep], dist2[keep]

  def restrict(self, threshold: np.float32) -> '_Candidates':
    """The candidates at a higher threshold: a subset, with the pairs among it."""
    keep = self.value >= threshold
    new_index = np.cumsum(keep, dtype=np.int32) - 1
    pair = keep[self.first] & keep[self.second]
    out = object.__new__(_Candidates)
    out.image, out.pixel, out.value = self.image[keep], self.pixel[keep], self.value[keep]
    out.size = out.image.size
    out.first, out.second = new_index[self.first[pair]], new_index[self.second[pair]]
    out.dist2 = self.dist2[pair]
    return out

  def clusters(self, eps: float, min_samples_values: Sequence[int]) -> Iterator[np.ndarray]:
    """Per min_samples: each candidate's cluster as the index of the cluster's
    lowest core candidate (-1: noise).

    Candidates are sorted by image, so a cluster's id lies among its image's own
    candidate indices, and ids order clusters as scikit-learn numbers them.
    """
    a, b = self.first, self.second
    if eps * eps < self.dist2.max(initial=0.0):
      near = self.dist2 <= eps * eps
      a, b = a[near], b[near]
    neighbours = 1 + np.bincount(a, minlength=self.size) + np.bincount(b, minlength=self.size)
    ones = np.ones(a.size)  # edge weights in float64, SciPy's graph dtype: nothing to convert
    for min_samples in min_samples_values:
      core = neighbours >= min_samples
      core_a, core_b = core[a], core[b]
      linked = core_a & core_b
      # Pairs come sorted by their first point (row-major nonzero), so the CSR
      # structure is direct: no COO sort.
      rows, cols = a[linked], b[linked]
      indptr = np.zeros(self.size + 1, np.int32)
      np.cumsum(np.bincount(rows, minlength=self.size), out=indptr[1:])
      graph = sparse.csr_matrix((ones[:rows.size], cols, indptr), shape=(self.size, self.size))
      count, component = csgraph.connected_components(graph, directed=False)
      lowest = np.full(count, self.size, np.int32)  # each component's lowest candidate
      np.minimum.at(lowest, component, np.arange(self.size, dtype=np.int32))
      label = np.where(core, lowest[component], -1)
      # Border points join the neighbouring cluster that scikit-learn numbers first.
      none = np.iinfo(np.int32).max
      border_label = np.full(self.size, none, np.int32)
      to_b, to_a = core_a & ~core_b, core_b & ~core_a
      np.minimum.at(border_label, b[to_b], label[a[to_b]])
      np.minimum.at(border_label, a[to_a], label[b[to_a]])
      border = border_label < none
      label[border] = border_label[border]
      yield label


def _largest_clusters(label: np.ndarray, image: np.ndarray, num_images: int) -> np.ndarray:
  """int64 (num_images,): the size of each image's largest cluster (0 if none)."""
  sizes = np.bincount(label + 1, minlength=label.size + 1)[1:]  # bin 0 counts noise
  clusters = np.flatnonzero(sizes)
  largest = np.zeros(num_images, np.int64)
  np.maximum.at(largest, image[clusters], sizes[clusters])
  return largest


# A quarter of the image's side (32 px at 128), far past a tumour's size (the default grid's
# largest eps is 3.2 px). The window, (2 eps H + 1) x (2 eps W + 1) pixels, and with it the
# memory of one image's pairs grow as eps**2: an all-anomalous 128 px map took 0.8 GB at 0.25,
# 3.2 GB at 0.5; eps = 1e12 was a MemoryError traceback once the model had trained.
MAX_EPS = 0.25


def check_params(eps_values, min_samples_values):
  eps_values = np.asarray(eps_values, np.float64).reshape(-1)
  if eps_values.size == 0 or not ((eps_values > 0) & (eps_values <= MAX_EPS)).all():
    raise ValueError(f'eps must be positive and at most {MAX_EPS} (a quarter of the image\'s '
                     f'side, in the features\' units), got {eps_values}')
  # (as float64: 2**63 cast to int64 wrapped to -2**63, every pixel a core point, and a Python
  # int past uint64 made an object array, a TypeError)
  min_samples_values = np.asarray(min_samples_values, np.float64).reshape(-1)
  if min_samples_values.size == 0 or not ((min_samples_values >= 1)
                                          & (min_samples_values < 2 ** 31)).all() or not np.all(
      min_samples_values == np.round(min_samples_values)):
    raise ValueError(f'min_samples must be integers in [1, 2**31), got {min_samples_values}')
  return eps_values, min_samples_values.astype(np.int64)


def dbscan_grid_scores(errors: np.ndarray, anomaly_thresholds: Sequence[float],
                       eps_values: Sequence[float], min_samples_values: Sequence[int],
                       image_shape: Optional[Sequence[int]] = None) -> np.ndarray:
  """float64 (N, T, E, M): largest-cluster fraction for every outer grid point."""
  errors = pixel_features.check_errors(errors)
  h, w = pixel_features.image_shape(errors.shape[1], image_shape)
  thresholds = pixel_features.check_grid(anomaly_thresholds, 'anomaly_thresholds')
  eps_values, min_samples_values = check_params(eps_values, min_samples_values)
  n = len(errors)
  scores = np.zeros((n, thresholds.size, eps_values.size, min_samples_values.size))

  def score_chunk(chunk: slice):
    # The pairs at the lowest threshold (the most candidates) and the largest eps
    # contain those of every grid point: find them once per chunk of images.
    candidates = _Candidates(errors[chunk], thresholds[0], float(eps_values.max()), h, w)
    for t, threshold in enumerate(thresholds):
      if t:  # thresholds ascend: each one's candidates are a subset of the previous one's
        candidates = candidates.restrict(threshold)
      for e, eps in enumerate(eps_values):
        for m, label in enumerate(candidates.clusters(eps, min_samples_values)):
          largest = _largest_clusters(label, candidates.image, chunk.stop - chunk.start)
          scores[chunk, t, e, m] = largest / (h * w)

  threads.thread_map(score_chunk, _image_chunks((errors >= thresholds[0]).sum(axis=1),
                                                float(eps_values.max()), h, w))
  return scores


def dbscan_labels(errors: np.ndarray, anomaly_threshold: float, eps: float, min_samples: int,
                  image_shape: Optional[Sequence[int]] = None) -> np.ndarray:
  """int64 (N, H*W): each pixel's cluster in its image (0, 1, ...; -1 noise or below threshold).

  Numbered as scikit-learn numbers DBSCAN(eps, min_samples) on the image's
  anomalous pixels in row-major order.
  """
  errors = pixel_features.check_errors(errors)
  h, w = pixel_features.image_shape(errors.shape[1], image_shape)
  (eps,), (min_samples,) = check_params([eps], [min_samples])
  threshold = np.float32(anomaly_threshold)
  out = np.full(errors.shape, -1, np.int64)
  for chunk in _image_chunks((errors >= threshold).sum(axis=1), eps, h, w):
    candidates = _Candidates(errors[chunk], threshold, eps, h, w)
    (label,) = candidates.clusters(eps, [min_samples])
    # Number each image's clusters 0, 1, ... in the order of their ids.
    ids = np.unique(label[label >= 0])
    id_image = candidates.image[ids]  # non-decreasing, as ids are
    rank = np.full(candidates.size + 1, -1, np.int64)  # rank[-1]: noise stays -1
    rank[ids] = np.arange(ids.size) - np.searchsorted(id_image, id_image, side='left')
    out[chunk][candidates.image, candidates.pixel] = rank[label]
  return out


def dbscan(errors: np.ndarray, anomaly_threshold: float, eps: float, min_samples: int,
           tumor_index: float,
           image_shape: Optional[Sequence[int]] = None) -> pixel_features.RuleOutput:
  """Applies the rule; region = the pixels of each image's largest cluster."""
  labels = dbscan_labels(errors, anomaly_threshold, eps, min_samples, image_shape)
  n, width = len(labels), int(labels.max(initial=-1)) + 2  # column 0 counts noise
  sizes = np.bincount((labels + 1 + width * np.arange(n)[:, None]).reshape(-1),
                      minlength=n * width).reshape(n, width)[:, 1:]
  if sizes.shape[1] == 0:  # no cluster in any image
    sizes = np.zeros((n, 1), np.int64)
  largest = sizes.argmax(axis=1)  # first (lowest id) maximum; 0 when no cluster
  score = sizes.max(axis=1) / labels.shape[1]
  region = (labels == largest[:, None]) & (labels >= 0)
  return pixel_features.RuleOutput(
      score=score, prediction=(score >= tumor_index).astype(np.int32), region=region)
