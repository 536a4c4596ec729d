"""Validation grid search shared by the four anomaly rules.

Every rule has the same shape: an expensive "outer" part (a clustering or a
thresholding, one per outer grid point) yields a continuous score per image, and
a cheap "inner" cut-off turns it into a prediction (score >= cut-off). So one
driver serves all: `select` takes the (N, C) scores of all C outer points and V
cut-offs, counts the confusion matrices of all C x V grid points by binary
search in each outer point's sorted scores, and picks the best by the chosen
metric. Ties are broken deterministically: metric values are rounded to 12
decimals, then the first maximum in (outer, inner) row-major order wins, i.e. the
smallest outer index, then the smallest cut-off index.

The per-rule wrappers below map grid indices back to named hyperparameters.
"""
from typing import Dict, NamedTuple, Optional, Sequence

import numpy as np

from brainjax.anomaly import dbscan as dbscan_rule
from brainjax.anomaly import giaem as giaem_rule
from brainjax.anomaly import kmeans_global as global_rule
from brainjax.anomaly import kmeans_image as kmeans_rule
from brainjax.anomaly import pixel_features
from brainjax.evaluation import classification


class Selection(NamedTuple):
  outer: int  # index into the flattened outer grid
  inner: int  # index of the cut-off
  value: float  # the metric there


class SearchResult(NamedTuple):
  params: Dict[str, float]  # chosen hyperparameters by name
  value: float  # validation metric at the chosen point
  metric: str
  extra: Dict[str, np.ndarray]  # e.g. fitted centroids needed to apply the rule


def check_labels(labels, n: int) -> np.ndarray:
  """bool (n,) labels (1 = tumour), or a ValueError."""
  labels = classification.as_binary('labels', labels)
  if labels.shape != (n,):
    raise ValueError(f'labels must have shape ({n},), got {labels.shape}')
  return labels


def confusion_grid(scores: np.ndarray, labels: np.ndarray, cutoffs: np.ndarray):
  """(tn, fp, fn, tp), each int64 (C, V), of predictions scores[:, c] >= cutoffs[v].

  Counts by binary search in each column's sorted scores: O(C N log N + C V log N),
  not the O(N C V) of comparing every score with every cut-off (3000 images, 100 x
  100 grid points: `select` in 6 against 29 ms).
  """
  scores = np.asarray(scores, np.float64)
  cutoffs = np.asarray(cutoffs, np.float64).reshape(-1)
  labels = check_labels(labels, scores.shape[0])

  def at_or_above(class_scores):  # (C, V): scores of the class >= each cut-off
    ordered = np.sort(class_scores, axis=0)
    below = [np.searchsorted(column, cutoffs, side='left') for column in ordered.T]
    return len(ordered) - np.array(below, np.int64).reshape(ordered.shape[1], cutoffs.size)

  tp, fp = at_or_above(scores[labels]), at_or_above(scores[~labels])
  return int((~labels).sum()) - fp, fp, int(labels.sum()) - tp, tp


# Grid points whose confusion counts and metrics are held at once (float64 arrays, a dozen per
# point): a 10**4 x 10**4 grid in one piece took some 20 GB.
_POINTS_PER_CHUNK = 1 << 18


def select(scores: np.ndarray, labels: np.ndarray, cutoffs: np.ndarray,
           metric: str = 'f1') -> Selection:
  """Best (outer, cut-off) pair of a score matrix (N, C) by `metric`."""
  if metric not in classification.METRIC_NAMES:
    raise ValueError(f'unknown selection metric {metric!r}; '
                     f'choose from {classification.METRIC_NAMES}')
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 2 or scores.shape[1] == 0 or np.size(cutoffs) == 0:
    raise ValueError(f'need scores (N, C>0) and cut-offs, got {scores.shape}, {np.shape(cutoffs)}')
  rows = max(1, _POINTS_PER_CHUNK // np.size(cutoffs))  # outer points at a time
  best = None  # (rounded value, Selection)
  for start in range(0, scores.shape[1], rows):
    table = classification.metrics_from_confusion(
        *confusion_grid(scores[:, start:start + rows], labels, cutoffs))[metric]
    rounded = np.round(table, 12)
    first = int(np.argmax(rounded))  # first maximum in row-major order ...
    outer, inner = divmod(first, table.shape[1])
    if best is None or rounded[outer, inner] > best[0]:  # ... over all chunks
      best = (rounded[outer, inner], Selection(start + outer, inner, float(table[outer, inner])))
  return best[1]


def search_giaem(errors, labels, anomaly_thresholds: Sequence[float],
                 tumor_indices: Sequence[float], metric: str = 'f1',
                 codes: Optional[np.ndarray] = None) -> SearchResult:
  thresholds = pixel_features.check_grid(anomaly_thresholds, 'anomaly_thresholds')
  tumor_indices = np.asarray(tumor_indices, np.float64)
  scores = giaem_rule.giaem_grid_scores(errors, thresholds, codes)
  best = select(scores, labels, tumor_indices, metric)
  params = dict(anomaly_threshold=float(thresholds[best.outer]),
                tumor_index=float(tumor_indices[best.inner]))
  return SearchResult(params, best.value, metric, {})


def search_dbscan(errors, labels, anomaly_thresholds: Sequence[float],
                  eps_values: Sequence[float], min_samples_values: Sequence[int],
                  tumor_indices: Sequence[float], metric: str = 'f1',
                  image_shape: Optional[Sequence[int]] = None) -> SearchResult:
  thresholds = pixel_features.check_grid(anomaly_thresholds, 'anomaly_thresholds')
  eps_values = np.asarray(eps_values, np.float64).reshape(-1)
  min_samples_values = np.asarray(min_samples_values).reshape(-1)
  tumor_indices = np.asarray(tumor_indices, np.float64)
  scores = dbscan_rule.dbscan_grid_scores(
      errors, thresholds, eps_values, min_samples_values, image_shape)  # (N, T, E, M)
  best = select(scores.reshape(len(scores), -1), labels, tumor_indices, metric)
  t, e, m = np.unravel_index(best.outer, scores.shape[1:])
  params = dict(anomaly_threshold=float(thresholds[t]), eps=float(eps_values[e]),
                min_samples=int(min_samples_values[m]),
                tumor_index=float(tumor_indices[best.inner]))
  return SearchResult(params, best.value, metric, {})


def search_kmeans_image(errors, labels, tumor_indices: Sequence[float], metric: str = 'f1',
                        image_shape: Optional[Sequence[int]] = None,
                        max_iter: int = 100) -> SearchResult:
  tumor_indices = np.asarray(tumor_indices, np.float64)
  scores = kmeans_rule.kmeans_image_scores(errors, image_shape, max_iter)
  best = select(scores[:, None], labels, tumor_indices, metric)
  return SearchResult(dict(tumor_index=float(tumor_indices[best.inner])), best.value, metric, {})


def search_global_kmeans(errors, labels, anomaly_thresholds: Sequence[float],
                         alphas: Sequence[float], metric: str = 'f1',
                         codes: Optional[np.ndarray] = None,
                         max_iter: int = 300) -> SearchResult:
  thresholds = pixel_features.check_grid(anomaly_thresholds, 'anomaly_thresholds')
  alphas = np.asarray(alphas, np.float64).reshape(-1)
  if not (np.isfinite(alphas).all() and (alphas > 0).all()):
    raise ValueError(f'alphas must be positive and finite, got {alphas}')
  grid = global_rule.global_kmeans_grid_scores(errors, thresholds, codes, max_iter)
  best = select(grid.scores, labels, 1.0 / (1.0 + alphas), metric)
  params = dict(anomaly_threshold=float(thresholds[best.outer]), alpha=float(alphas[best.inner]))
  return SearchResult(params, best.value, metric, dict(centroids=grid.centroids[best.outer]))
