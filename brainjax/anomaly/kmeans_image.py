"""Single-image KMeans (study rule 3): two clusters of pixels per error map.

Rule. Each image's pixels, with features (error, row / H, col / W) (see
pixel_features), are split into two clusters by Lloyd's algorithm; the anomalous
cluster is the one whose members have the larger mean error (equal means: neither,
as in a constant map; see anomalous_cluster); score = the anomalous cluster's share
of the image; tumour if score >= tumor_index. The clustering depends on no
hyperparameter, so it is computed once per image and every tumor_index is then a
comparison.

Initialisation (deterministic, no random restarts), two-stage because Lloyd
turns the spatial split only slowly (18-28 iterations from a pixel start on
128 x 128 maps, 2-11 from the coarse solution): on the 4 x 4 mean-pooled map
(features: pooled error, block-centre position), start from the pixel with the
largest error and the pixel farthest from it (first index on ties; the greedy
farthest-point variant of k-means++) and run Lloyd; its centroids start Lloyd on
the full map. Maps whose sides are not multiples of 4 (or below 16 px) skip the
coarse stage. Lloyd iterations run until no assignment changes
(scikit-learn's "strict convergence") or max_iter; a point equidistant from both
centroids joins the first; an emptied cluster keeps its centroid. A few images
iterate side by side, each for its own iterations (see _lloyd); matmuls for the
sums.

Expect little from this rule: position spans [0, 1) on two axes while most
errors are small, so two clusters mostly split the image in halves (the study
also found it "not able to actually detect the tumorous regions").
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from brainjax import threads
from brainjax.anomaly import pixel_features
from brainjax.train import compile_options

# Images per jitted call: one compiled shape for every N, and few calls (each
# call allocates its buffers, which is slow under a fragmented heap).
_IMAGES_PER_CALL = 64
# Images iterated side by side. Each image runs its own iterations (2-11 from the
# coarse solution, 4 on average): a finished image's slot takes the next image,
# so no image iterates for the slowest one of a batch (2x faster than batches of
# 8 run until all have converged).
_SLOTS = 8
_COARSE = 4  # pooling factor of the initialisation stage
# Relative gap below which two clusters' mean errors are equal: float64 sums of up to 2**16
# float32 errors in another order differ by far less.
TIE_RTOL = 1e-9


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


def _assign(errors, rows, cols, centroids):
  """bool (B, D): pixel nearer the second centroid of its image (B, 2, 3); ties: the first."""
  # d1 < d0  <=>  2 x.(c0 - c1) + |c1|^2 - |c0|^2 < 0 (the form scikit-learn uses)
  c0, c1 = centroids[:, 0], centroids[:, 1]
  g = 2 * (c0 - c1)
  b = jnp.sum(c1 * c1 - c0 * c0, axis=1, keepdims=True)
  linear = errors * g[:, 0:1] + (rows[None, :] * g[:, 1:2] + cols[None, :] * g[:, 2:3])
  return linear + b < 0


def _update(errors, totals, ones_rows_cols, second, centroids):
  """(B, 2, 3): each cluster's mean feature; an empty cluster keeps its centroid.

  totals (B, 3): each image's feature sums; ones_rows_cols (D, 3): 1, row, col.
  """
  size = errors.shape[1]
  # Materialise the mask once: XLA's fused multi-reductions are slow on CPU.
  m = jax.lax.optimization_barrier(second.astype(jnp.float32))
  count_rows_cols = m @ ones_rows_cols  # (B, 3)
  count = count_rows_cols[:, 0:1]
  sums = jnp.concatenate([jnp.sum(m * errors, axis=1, keepdims=True), count_rows_cols[:, 1:]],
                         axis=1)
  mean1 = sums / jnp.maximum(count, 1)
  mean0 = (totals - sums) / jnp.maximum(size - count, 1)
  return jnp.stack([jnp.where(count < size, mean0, centroids[:, 0]),
                    jnp.where(count > 0, mean1, centroids[:, 1])], axis=1)


def _lloyd(errors, rows, cols, start, num_images, max_iter):
  """Lloyd's algorithm on each of the first num_images images of errors (N, D), from
  centroids start (N, 2, 3), until no assignment changes or max_iter iterations.

  _SLOTS images iterate side by side; a finished image's slot takes the next one,
  so each image gets exactly its own iterations. An image's assignment is
  recomputed from its centroids (it is a function of them), so a slot carries
  only centroids. Returns the final centroids (N, 2, 3); images from num_images
  on keep their start.
  """
  n = errors.shape[0]
  ones_rows_cols = jnp.stack([jnp.ones_like(rows), rows, cols], axis=1)
  totals = jnp.concatenate([jnp.sum(errors, axis=1, keepdims=True),
                            jnp.broadcast_to(jnp.sum(ones_rows_cols[:, 1:], axis=0), (n, 2))],
                           axis=1)

  def body(state):
    image, centroids, step, next_image, final = state
    row = jnp.minimum(image, n - 1)  # idle slots (image >= num_images) compute on a copy
    x = errors[row]
    second = _assign(x, rows, cols, centroids)
    centroids = _update(x, totals[row], ones_rows_cols, second, centroids)
    changed = jnp.any(_assign(x, rows, cols, centroids) != second, axis=1)
    step = step + 1
    done = (~changed | (step >= max_iter)) & (image < num_images)
    final = final.at[jnp.where(done, image, n)].set(centroids, mode='drop')
    # Finished slots take the next images, in slot order.
    image = jnp.where(done, next_image + jnp.cumsum(done) - 1, image)
    next_image = next_image + jnp.sum(done)
    centroids = jnp.where(done[:, None, None], start[jnp.minimum(image, n - 1)], centroids)
    return image, centroids, jnp.where(done, 0, step), next_image, final

  slots = min(_SLOTS, n)
  image = jnp.arange(slots)
  state = (image, start[image], jnp.zeros(slots, jnp.int32), jnp.int32(slots), start)
  return jax.lax.while_loop(lambda s: jnp.any(s[0] < num_images), body, state)[-1]


def coarse_factor(h: int, w: int) -> int:
  """Pooling factor of the initialisation stage: 4 when it divides the image, else 1."""
  return _COARSE if h % _COARSE == 0 and w % _COARSE == 0 and min(h, w) >= 4 * _COARSE else 1


@compile_options.jit(static_argnames=('h', 'w', 'max_iter'),
                      cpu_options=compile_options.QUICK_COMPILE)  # compiling: most of a first call
def _cluster_chunk(errors, num_images, h, w, max_iter):
  """(second bool (N, D), centroids (N, 2, 3)) of the first num_images images."""
  factor = coarse_factor(h, w)
  rows, cols = (jnp.asarray(a) for a in pixel_features.pixel_grid(h, w))
  if factor > 1:
    pooled = errors.reshape(-1, h // factor, factor, w // factor, factor).mean(axis=(2, 4))
    pooled = pooled.reshape(errors.shape[0], -1)
    coarse_rows, coarse_cols = (jnp.asarray(a) for a in pixel_features.pixel_grid(h, w, factor))
    start = _lloyd(pooled, coarse_rows, coarse_cols,
                   _farthest_point_init(pooled, coarse_rows, coarse_cols), num_images, max_iter)
  else:
    start = _farthest_point_init(errors, rows, cols)
  centroids = _lloyd(errors, rows, cols, start, num_images, max_iter)
  return _assign(errors, rows, cols, centroids), centroids


def _cluster_mean_errors(errors, second, centroids):
  """float64 (N,), (N,): each image's mean error in its first and second cluster, summed in
  float64 (the float32 centroids carry the rounding of the sums: exactly equal means came
  out unequal, and unequal ones equal). An empty cluster keeps its centroid's error."""
  means = np.empty((len(errors), 2))

  def fill(rows: slice):
    e, in_second = errors[rows], second[rows]
    for k, members in enumerate((~in_second, in_second)):
      count = members.sum(axis=1)
      total = np.sum(e, axis=1, dtype=np.float64, where=members)
      means[rows, k] = np.where(count > 0, total / np.maximum(count, 1), centroids[rows, k, 0])

  threads.thread_map(fill, threads.row_chunks(len(errors), errors.shape[1]))
  return means[:, 0], means[:, 1]


def anomalous_cluster(mean_first, mean_second):
  """(second is anomalous, tie), bool arrays: the anomalous cluster has the larger mean error;
  means within TIE_RTOL of each other (a constant map's, or exactly equal ones as float64 sums
  give them) are a tie, and neither cluster is anomalous (as GIAEM and DBSCAN find nothing in
  a constant map, which minmax normalisation makes all zeros: a perfect reconstruction)."""
  mean_first, mean_second = np.asarray(mean_first), np.asarray(mean_second)
  scale = np.maximum(np.abs(mean_first), np.abs(mean_second))
  tie = np.abs(mean_second - mean_first) <= TIE_RTOL * scale
  return (mean_second > mean_first) & ~tie, tie


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
    if valid < batch:  # one compiled shape; the padding is never clustered
      chunk = np.concatenate([chunk, np.zeros((batch - valid, chunk.shape[1]), chunk.dtype)])
    member, fitted = _cluster_chunk(chunk, np.int32(valid), h, w, max_iter)
    second[rows] = np.asarray(member)[:valid]
    centroids[rows] = np.asarray(fitted)[:valid]

  # Calls from one thread per core run side by side (1.7x on 2 cores; XLA's own
  # threads have little to split in such small steps).
  threads.thread_map(cluster, [slice(start, start + batch) for start in range(0, n, batch)])
  second_is_anomalous, tie = anomalous_cluster(*_cluster_mean_errors(errors, second, centroids))
  anomalous = (second == second_is_anomalous[:, None]) & ~tie[:, None]
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
