"""Global KMeans (study rule 4): two clusters of images in thresholded-error space.

Rule. Threshold the (N, H*W) error matrix at anomaly_threshold into binary rows
x_i (pixel anomalous or not) and split the N rows into two clusters with KMeans.
The tumour cluster is the one whose centroid has the larger anomalous mass (sum
of centroid entries: the mean number of anomalous pixels of its members). With
d_T, d_H the Euclidean distances of an image to the tumour / healthy centroids,
the image is a tumour iff d_T <= alpha * d_H (one on both centroids: iff alpha >= 1).
Score (continuous, for ROC AUC and the alpha grid): s = d_H / (d_T + d_H) in
[0, 1] (0.5 when both are 0); tumour iff s >= 1 / (1 + alpha). alpha = 1 is plain
nearest-centroid; alpha < 1 shrinks the tumour cluster, which is our reading of
the study's "alpha restricts the clusters that, empirically, were too big" (the
paper gives no formula).
At test time the centroids fitted on the validation images are kept (the fitted
model); passing no centroids fits on the given images instead.

KMeans. Lloyd's algorithm from a deterministic start (start_members): the
images with above-median anomalous mass form the first cluster (cluster 1), the
others cluster 0; iterate until no assignment changes (or max_iter); a point
nearer neither centroid joins cluster 0; an empty cluster keeps its centroid.
Same result as scikit-learn's KMeans(2, init=<those two centroids>, n_init=1,
tol=0) up to ties: distances are compared in floating point (from exact integer
products, but rounded), so a row exactly as far from both may go either way, as
in scikit-learn. When every row has the same mass, both centroids start at the
mean row and every score is 0.5 (scikit-learn would move its empty cluster).

Why it is fast. Rows are binary, so ||x - c||^2 = |x| - 2 x.c + |c|^2 and Lloyd
needs only sparse products with the anomalous pixels (or, when more than half the
pixels are anomalous, with the complement). A centroid is kept as its members'
integer sum S and count m (c = S / m), so x.S is an exact integer product, and one
product per iteration serves both centroids (x.S_0 = x.S_all - x.S_1). Each row's
pixels are sorted once by threshold code, so the anomalous set at every threshold
is a prefix of its row.
Hamerly's bounds (an upper bound on the distance to the own centroid, a lower
bound on the distance to the other, moved by the centroid shifts) skip the rows
whose assignment cannot change, so later iterations touch few rows; the result
is exactly Lloyd's.
"""
from typing import NamedTuple, Optional, Sequence

import numpy as np
from scipy import sparse

from brainjax import threads
from brainjax.anomaly import pixel_features


class _BinaryRows:
  """A binary (N, D) matrix as a sparse pattern of its ones, or of its zeros when
  those are fewer (complement). The pattern's values are int32 ones, so products
  with integer vectors are exact and need no conversion."""

  def __init__(self, indptr: np.ndarray, indices: np.ndarray, complement: bool,
               num_cols: int, mass: np.ndarray, ones: Optional[np.ndarray] = None):
    self.complement = complement
    self.num_cols = num_cols
    self.mass = np.asarray(mass, np.int64)  # ones per row
    # scipy needs a data array: a view of a shared buffer of ones when one is given
    data = (ones[:indices.size] if ones is not None and ones.size >= indices.size
            else np.ones(indices.size, np.int32))
    self.pattern = sparse.csr_matrix((data, indices, indptr), shape=(self.mass.size, num_cols))

  @classmethod
  def from_mask(cls, mask: np.ndarray) -> '_BinaryRows':
    mass = mask.sum(axis=1)
    complement = mass.sum() * 2 > mask.size
    rows, cols = pixel_features.nonzero_2d(~mask if complement else mask)
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=len(mask)))]
    return cls(indptr, cols.astype(np.int32), complement, mask.shape[1], mass)

  @classmethod
  def from_sorted_rows(cls, order: np.ndarray, counts: np.ndarray,
                       ones: Optional[np.ndarray] = None) -> '_BinaryRows':
    """Row i's ones are order[i, :counts[i]] (order: each row's columns sorted)."""
    n, d = order.shape
    complement = counts.sum() * 2 > n * d
    lengths = d - counts if complement else counts
    indptr = np.r_[0, np.cumsum(lengths)]
    parts = ([row[c:] for row, c in zip(order, counts)] if complement
             else [row[:c] for row, c in zip(order, counts)])
    indices = np.concatenate(parts, dtype=np.int32) if n else np.zeros(0, np.int32)
    return cls(indptr, indices, complement, d, counts, ones)

  def rows_dot(self, rows: Optional[np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """(R, K): x_r . v for the given rows (None: all) and each row v of vectors (K, D);
    exact int64 for integer vectors, float64 otherwise."""
    subset = rows is not None and rows.size * 2 <= self.mass.size  # else a full pass is cheaper
    pattern = self.pattern[rows] if subset else self.pattern
    if not np.issubdtype(vectors.dtype, np.integer):
      pattern = pattern.astype(np.float64)  # SciPy would convert it for every vector
    elif self.num_cols * int(np.abs(vectors).max(initial=0)) < 2 ** 31:
      vectors = vectors.astype(np.int32)  # the pattern's dtype (half the time of float64)
    # One product per vector: SciPy's multi-vector product (csr_matvecs) is 2x slower
    # per vector here (74 against 2 x 20 ms for two float64 vectors over 19M ones).
    out = np.stack([pattern @ v for v in vectors], axis=1)
    if rows is not None and not subset:
      out = out[rows]
    if self.complement:
      out = vectors.sum(axis=1)[None, :] - out
    return out.astype(np.int64) if np.issubdtype(out.dtype, np.integer) else out

  def rows_sum(self, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """int64 (D,): sum_r weights[r] x_r (int (N,), mostly zeros; None: all ones)."""
    if weights is None:
      counts, weight = np.asarray(self.pattern.sum(axis=0)).reshape(-1), self.mass.size
    else:
      pattern, rows = self.pattern, np.flatnonzero(weights)
      if rows.size * 4 <= weights.size:  # else a full pass is cheaper than copying the rows
        pattern, weights = pattern[rows], weights[rows]
      weights = weights.astype(np.int32)
      counts, weight = pattern.T @ weights, int(weights.sum())
    counts = counts.astype(np.int64)
    return weight - counts if self.complement else counts


class _Clusters(NamedTuple):
  """Two clusters as integer sums, so that Lloyd's distances come from exact integer
  dot products: centroid k = sums[k] / sizes[k]."""
  sums: np.ndarray  # int64 (2, D): per pixel, how many members have it anomalous
  sizes: np.ndarray  # int64 (2,): members; an emptied cluster keeps its last sums and size

  def centroids(self) -> np.ndarray:
    return self.sums / self.sizes[:, None]


def _split(total: np.ndarray, sum1: np.ndarray, n: int, n1: int,
           previous: _Clusters) -> _Clusters:
  """The clusters of n rows summing to total whose n1 members of cluster 1 sum to sum1."""
  sums, sizes = previous.sums.copy(), previous.sizes.copy()
  if n1 < n:
    sums[0], sizes[0] = total - sum1, n - n1
  if n1 > 0:
    sums[1], sizes[1] = sum1, n1
  return _Clusters(sums, sizes)


def _distances(mass: np.ndarray, dots: np.ndarray, sq_norms: np.ndarray) -> np.ndarray:
  """(R, 2) Euclidean distances of binary rows with `mass` ones to two centroids c, from
  x.c (R, 2) and |c|^2 (2,): ||x - c||^2 = |x| - 2 x.c + |c|^2."""
  return np.sqrt(np.maximum(mass[:, None] - 2 * dots + sq_norms, 0.0))


def _cluster_distances(x: _BinaryRows, rows: Optional[np.ndarray], clusters: _Clusters,
                       x_total: np.ndarray) -> np.ndarray:
  """(R, 2) distances of rows (None: all) to the two clusters' centroids S / m.

  x.S and |S|^2 are exact integers. x_total (N,): each row's dot with the sum of all
  rows; while the clusters split the rows, x.S_0 = x_total - x.S_1, so one product
  serves both centroids.
  """
  sums, sizes = clusters
  if sizes.sum() == x.mass.size:  # both clusters non-empty: sums[0] + sums[1] = total
    dot1 = x.rows_dot(rows, sums[1:])[:, 0]
    dots = np.stack([(x_total if rows is None else x_total[rows]) - dot1, dot1], axis=1)
  else:
    dots = x.rows_dot(rows, sums)
  mass = x.mass if rows is None else x.mass[rows]
  return _distances(mass, dots / sizes, np.sum(sums * sums, axis=1) / sizes ** 2)


def start_members(mass: np.ndarray) -> np.ndarray:
  """bool (N,): the rows that start in cluster 1, those of above-median mass.

  When more than half the rows share the largest mass none is above the median:
  then those of the largest mass (an empty start cluster would put both centroids
  on the mean row, and no row would ever leave cluster 0).
  """
  high = mass > np.median(mass)
  return high if high.any() else mass == mass.max(initial=0)


def _lloyd(x: _BinaryRows, max_iter: int):
  """Two-means of the rows of x: (in_cluster_1 bool (N,), clusters, x_total (N,))."""
  n = x.mass.size
  total = x.rows_sum()
  x_total = x.rows_dot(None, total[None])[:, 0]
  member = start_members(x.mass)
  sum1 = x.rows_sum(member)
  everything = _Clusters(np.stack([total, total]), np.array([n, n]))  # both at the mean row
  clusters = _split(total, sum1, n, int(member.sum()), everything)
  dist = _cluster_distances(x, None, clusters, x_total)
  new_member = dist[:, 1] < dist[:, 0]
  upper = np.where(new_member, dist[:, 1], dist[:, 0])  # >= distance to own centroid
  lower = np.where(new_member, dist[:, 0], dist[:, 1])  # <= distance to the other
  slack = 1e-9 * (1.0 + float(np.sqrt(x.num_cols)))
  for _ in range(max_iter):  # an iteration: update the centroids, then assign (scikit-learn's)
    moved = new_member != member
    if not moved.any():
      break
    sum1 += x.rows_sum(moved * np.where(new_member, 1, -1))  # joined minus left
    member = new_member
    new_clusters = _split(total, sum1, n, int(member.sum()), clusters)
    shift = np.sqrt(np.sum((new_clusters.centroids() - clusters.centroids()) ** 2, axis=1))
    clusters = new_clusters
    upper += np.where(member, shift[1], shift[0])
    lower = np.maximum(lower - np.where(member, shift[0], shift[1]), 0.0)
    unsure = np.flatnonzero(upper >= lower - slack)
    new_member = member.copy()
    if unsure.size:
      d = _cluster_distances(x, unsure, clusters, x_total)
      closer1 = d[:, 1] < d[:, 0]
      new_member[unsure] = closer1
      upper[unsure] = np.where(closer1, d[:, 1], d[:, 0])
      lower[unsure] = np.where(closer1, d[:, 0], d[:, 1])
  # Labels from the final centroids (differs from `member` only if max_iter ran out).
  return new_member, clusters, x_total


def _scores(distances: np.ndarray) -> np.ndarray:
  """s = d_H / (d_T + d_H) from (N, 2) distances to (tumour, healthy)."""
  d_t, d_h = distances[:, 0], distances[:, 1]
  den = d_t + d_h
  return np.where(den > 0, d_h / np.where(den > 0, den, 1.0), 0.5)


def _tumour_first(centroids: np.ndarray) -> np.ndarray:
  """Index order (tumour, healthy) of two centroids: the larger anomalous mass is the
  tumour (ties: cluster 1)."""
  mass = centroids.sum(axis=1)
  return np.array([1, 0]) if mass[1] >= mass[0] else np.array([0, 1])


def _check_alpha(alpha):
  if not (np.isfinite(alpha) and alpha > 0):
    raise ValueError(f'alpha must be positive and finite, got {alpha}')


def fit_global_kmeans(errors: np.ndarray, anomaly_threshold: float,
                      max_iter: int = 300) -> np.ndarray:
  """float64 (2, D) centroids (tumour, healthy) of the thresholded rows."""
  errors = pixel_features.check_errors(errors)
  if max_iter < 1:
    raise ValueError(f'max_iter must be >= 1, got {max_iter}')
  if len(errors) < 2:
    raise ValueError(f'global KMeans needs at least 2 images, got {len(errors)}')
  x = _BinaryRows.from_mask(errors >= np.float32(anomaly_threshold))
  centroids = _lloyd(x, max_iter)[1].centroids()
  return centroids[_tumour_first(centroids)]


def global_kmeans(errors: np.ndarray, anomaly_threshold: float, alpha: float,
                  centroids: Optional[np.ndarray] = None) -> pixel_features.RuleOutput:
  """Applies the rule; centroids (tumour, healthy) default to a fit on `errors`.

  region = the anomalous pixels (the thresholded row), the rule's only pixel map.
  """
  errors = pixel_features.check_errors(errors)
  _check_alpha(alpha)
  if centroids is None:
    centroids = fit_global_kmeans(errors, anomaly_threshold)
  centroids = np.asarray(centroids, np.float64)
  if centroids.shape != (2, errors.shape[1]):
    raise ValueError(f'centroids must be (2, {errors.shape[1]}), got {centroids.shape}')
  mask = errors >= np.float32(anomaly_threshold)
  x = _BinaryRows.from_mask(mask)
  score = _scores(_distances(x.mass, x.rows_dot(None, centroids), np.sum(centroids ** 2, axis=1)))
  return pixel_features.RuleOutput(
      score=score, prediction=(score >= 1.0 / (1.0 + alpha)).astype(np.int32), region=mask)


class GlobalGrid(NamedTuple):
  """Scores (N, T) at every threshold and the centroids (T, 2, D) fitted there."""
  scores: np.ndarray
  centroids: np.ndarray


def global_kmeans_grid_scores(errors: np.ndarray, anomaly_thresholds: Sequence[float],
                              codes: Optional[np.ndarray] = None,
                              max_iter: int = 300) -> GlobalGrid:
  """One KMeans per threshold, sharing one sort of every row by error."""
  errors = pixel_features.check_errors(errors)
  thresholds = pixel_features.check_grid(anomaly_thresholds, 'anomaly_thresholds')
  if len(errors) < 2:
    raise ValueError(f'global KMeans needs at least 2 images, got {len(errors)}')
  if codes is None:
    codes = pixel_features.threshold_codes(errors, thresholds)
  counts = pixel_features.counts_above(codes, thresholds.size)
  n, d = errors.shape
  # Each row's pixels by decreasing code: the anomalous ones at threshold k first.
  order = np.empty((n, d), np.uint16 if d <= 1 << 16 else np.int32)  # 128 x 128: half the bytes

  def sort_rows(rows: slice):
    order[rows] = np.argsort(np.iinfo(codes.dtype).max - codes[rows], axis=1, kind='stable')

  threads.thread_map(sort_rows, threads.row_chunks(n, d))
  scores = np.zeros((n, thresholds.size))
  centroids = np.zeros((thresholds.size, 2, d))
  # Read-only and shared: as many ones as the largest pattern stores (at most half the entries).
  ones_per_threshold = counts.sum(axis=0)
  ones = np.ones(int(np.minimum(ones_per_threshold, n * d - ones_per_threshold).max(initial=0)),
                 np.int32)

  def fit(k: int):  # the thresholds' KMeans are independent
    x = _BinaryRows.from_sorted_rows(order, counts[:, k], ones)
    _, clusters, x_total = _lloyd(x, max_iter)
    fitted = clusters.centroids()
    tumour_first = _tumour_first(fitted)
    centroids[k] = fitted[tumour_first]
    scores[:, k] = _scores(_cluster_distances(x, None, clusters, x_total)[:, tumour_first])

  threads.thread_map(fit, range(thresholds.size))
  return GlobalGrid(scores, centroids)
