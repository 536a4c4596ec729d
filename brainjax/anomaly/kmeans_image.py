"""Single-image KMeans (study rule 3): two clusters of pixels per error map.

Rule. Each image's pixels, with features (error, row / H, col / W) (see
pixel_features), are split into two clusters by Lloyd's algorithm; the anomalous
cluster is the one whose centroid has the larger error; score = the anomalous
cluster's share of the image; tumour if score >= tumor_index. The clustering
depends on no hyperparameter, so it is computed once per image and every
tumor_index is then a comparison.

Initialisation (deterministic, no random restarts), two-stage because Lloyd
turns the spatial split only slowly (18-28 iterations from a pixel start on
128 x 128 maps, 2-11 from the coarse solution): on the 4 x 4 mean-pooled map
(features: pooled error, block-centre position), start from the pixel with the
largest error and the pixel farthest from it (first index on ties; the greedy
farthest-point variant of k-means++) and run Lloyd; its centroids start Lloyd on
the full map. Maps whose sides are not multiples of 4 (or below 16 px) skip the
coarse stage. Lloyd iterations run until no assignment changes
(scikit-learn's "strict convergence") or max_iter; a point equidistant from both
centroids joins the first; an emptied cluster keeps its centroid. Batched over
images (one (B, H*W) array per step, matmuls for the sums).

Expect little from this rule: position spans [0, 1) on two axes while most
errors are small, so two clusters mostly split the image in halves (the study
also found it "not able to actually detect the tumorous regions").
"""
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from brainjax.anomaly import parallel
from brainjax.anomaly import pixel_features

# Images per jitted call. Small: the batch iterates until its slowest image has
# converged, so small batches waste fewer iterations (measured: 8 images per call
# is 3x cheaper than 256); also a single compiled shape for every N.
_IMAGES_PER_CALL = 8
_COARSE = 4  # pooling factor of the initialisation stage


def _squared_distances(errors, rows, cols, point):
  """(B, D) squared distances of every pixel to one feature point per image (B, 3)."""
  return ((errors - point[:, 0:1]) ** 2 + (rows[None, :] - point[:, 1:2]) ** 2
          + (cols[None, :] - point[:, 2:3]) ** 2)


def _farthest_point_init(errors, rows, cols):
  """(B, 2, 3): the pixel with the largest error, then the pixel farthest from it."""
  images = jnp.arange(errors.shape[0])

  def feature(index):
    return jnp.stack([errors[images, index], rows[index], cols[index]], axis=1)

  first = feature(jnp.argmax(errors, axis=1))
  second = feature(jnp.argmax(_squared_distances(errors, rows, cols, first), axis=1))
  return jnp.stack([first, second], axis=1)


def _lloyd_batch(errors, rows, cols, centroids, max_iter):
  """Lloyd on a batch of images (B, D) at once, from centroids (B, 2, 3).

  Returns (second: bool (B, D), pixel in the second cluster; centroids (B, 2, 3)).
  The batch iterates until no image changes; an image that has converged is a
  fixed point, so the extra iterations leave it as it was.
  """
  batch, size = errors.shape
  ones_rows_cols = jnp.stack([jnp.ones_like(rows), rows, cols], axis=1)  # (D, 3)
  total = jnp.concatenate([jnp.sum(errors, axis=1, keepdims=True),
                           jnp.broadcast_to(jnp.sum(ones_rows_cols[:, 1:], axis=0), (batch, 2))],
                          axis=1)

  def assign(centroids):
    # d1 < d0  <=>  2 x.(c0 - c1) + |c1|^2 - |c0|^2 < 0 (the form scikit-learn uses)
    c0, c1 = centroids[:, 0], centroids[:, 1]
    g = 2 * (c0 - c1)
    b = jnp.sum(c1 * c1 - c0 * c0, axis=1, keepdims=True)
    linear = errors * g[:, 0:1] + (rows[None, :] * g[:, 1:2] + cols[None, :] * g[:, 2:3])
    return linear + b < 0

  def update(member, centroids):
    # Materialise the mask once: XLA's fused multi-reductions are slow on CPU.
    m = jax.lax.optimization_barrier(member.astype(jnp.float32))
    count_rows_cols = m @ ones_rows_cols  # (B, 3)
    sum_error = jnp.sum(m * errors, axis=1, keepdims=True)
    count = count_rows_cols[:, 0:1]
    sums = jnp.concatenate([sum_error, count_rows_cols[:, 1:]], axis=1)
    mean1 = sums / jnp.maximum(count, 1)
    mean0 = (total - sums) / jnp.maximum(size - count, 1)
    return jnp.stack([jnp.where(count < size, mean0, centroids[:, 0]),
                      jnp.where(count > 0, mean1, centroids[:, 1])], axis=1)

  def body(state):
    centroids, member, _, step = state
    centroids = update(member, centroids)
    new_member = assign(centroids)
    return centroids, new_member, jnp.any(new_member != member), step + 1

  state = (centroids, assign(centroids), jnp.array(True), jnp.array(0))
  centroids, member, _, _ = jax.lax.while_loop(
      lambda s: s[2] & (s[3] < max_iter), body, state)
  return member, centroids


def pixel_grid(h: int, w: int, factor: int = 1):
  """float32 (row / H, col / W) of each pixel, or of each factor x factor block's
  centre (the mean position of its pixels), row-major."""
  rows = (np.arange(h // factor) * factor + (factor - 1) / 2) / h
  cols = (np.arange(w // factor) * factor + (factor - 1) / 2) / w
  return (np.repeat(rows, w // factor).astype(np.float32),
          np.tile(cols, h // factor).astype(np.float32))


def coarse_factor(h: int, w: int) -> int:
  """Pooling factor of the initialisation stage: 4 when it divides the image, else 1."""
  return _COARSE if h % _COARSE == 0 and w % _COARSE == 0 and min(h, w) >= 4 * _COARSE else 1


@functools.partial(jax.jit, static_argnames=('h', 'w', 'max_iter'))
def _cluster_batch(errors, h, w, max_iter):
  factor = coarse_factor(h, w)
  if factor > 1:
    pooled = errors.reshape(-1, h // factor, factor, w // factor, factor).mean(axis=(2, 4))
    pooled = pooled.reshape(errors.shape[0], -1)
    rows, cols = (jnp.asarray(a) for a in pixel_grid(h, w, factor))
    _, centroids = _lloyd_batch(pooled, rows, cols, _farthest_point_init(pooled, rows, cols),
                                max_iter)
  rows, cols = (jnp.asarray(a) for a in pixel_grid(h, w))
  if factor == 1:
    centroids = _farthest_point_init(errors, rows, cols)
  return _lloyd_batch(errors, rows, cols, centroids, max_iter)


def kmeans_image_clusters(errors: np.ndarray, image_shape: Optional[Sequence[int]] = None,
                          max_iter: int = 100):
  """Clusters every image once.

  Returns (anomalous bool (N, D): pixel in the anomalous cluster, second bool
  (N, D): pixel in the cluster initialised at the farthest point, centroids
  float32 (N, 2, 3) as (error, row / H, col / W)).
  """
  errors = pixel_features.check_errors(errors)
  h, w = pixel_features.image_shape(errors.shape[1], image_shape)
  if max_iter < 1:
    raise ValueError(f'max_iter must be >= 1, got {max_iter}')
  n = len(errors)
  second = np.zeros(errors.shape, bool)
  centroids = np.zeros((n, 2, 3), np.float32)
  batch = _IMAGES_PER_CALL

  def cluster(rows: slice):
    chunk = errors[rows]
    valid = len(chunk)
    if valid < batch:  # one compiled shape; copies of a real map converge with it
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - valid, axis=0)])
    member, fitted = _cluster_batch(chunk, h, w, max_iter)
    second[rows] = np.asarray(member)[:valid]
    centroids[rows] = np.asarray(fitted)[:valid]

  # Calls from one thread per core run side by side (1.6x on 2 cores; XLA's own
  # threads have little to split in such small calls).
  parallel.thread_map(cluster, [slice(start, start + batch) for start in range(0, n, batch)])
  # The anomalous cluster has the larger mean error (ties: the first cluster).
  second_is_anomalous = centroids[:, 1, 0] > centroids[:, 0, 0]
  anomalous = second == second_is_anomalous[:, None]
  return anomalous, second, centroids


def kmeans_image_scores(errors: np.ndarray, image_shape: Optional[Sequence[int]] = None,
                        max_iter: int = 100) -> np.ndarray:
  """float64 (N,): the anomalous cluster's share of each image."""
  anomalous, _, _ = kmeans_image_clusters(errors, image_shape, max_iter)
  return anomalous.sum(axis=1) / anomalous.shape[1]


def kmeans_image(errors: np.ndarray, tumor_index: float,
                 image_shape: Optional[Sequence[int]] = None,
                 max_iter: int = 100) -> pixel_features.RuleOutput:
  """Applies the rule; region = the anomalous cluster."""
  anomalous, _, _ = kmeans_image_clusters(errors, image_shape, max_iter)
  score = anomalous.sum(axis=1) / anomalous.shape[1]
  return pixel_features.RuleOutput(
      score=score, prediction=(score >= tumor_index).astype(np.int32), region=anomalous)
