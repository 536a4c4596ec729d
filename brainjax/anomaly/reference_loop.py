"""The straightforward baseline: the same four rules, image by image and grid point
by grid point, with scikit-learn and NumPy loops.

Used (a) in tests, to check that the fast grid search selects the same
hyperparameters, and (b) by the benchmark, to measure the speed-up. The loop does
each rule's per-image work once for the parameters it depends on, as a careful
direct implementation would: GIAEM's anomalous fraction once per threshold, one
scikit-learn DBSCAN per image and (threshold, eps, min_samples), one scikit-learn
KMeans per image (single-image rule) or per threshold (global rule); then the
metric of every grid point from its own predictions. Rule definitions and
tie-breaking are those of the fast path (see the rule modules), except where
kmeans_global says they differ (rows exactly as far from both centroids; rows
that all have the same mass).

Also `benchmark`, which times both on the same maps and checks they agree.
"""
import time
import warnings
from typing import Dict

import numpy as np
from sklearn import cluster
from sklearn.exceptions import ConvergenceWarning
import threadpoolctl

from brainjax.anomaly import evaluate
from brainjax.anomaly import grid_search
from brainjax.anomaly import kmeans_global
from brainjax.anomaly import kmeans_image
from brainjax.anomaly import pixel_features
from brainjax.evaluation import classification


class _Best:
  """Keeps the first grid point with the highest (12-decimal rounded) metric."""

  def __init__(self, metric: str):
    self.metric, self.value, self.params = metric, -np.inf, None

  def offer(self, labels, predictions, params):
    value = classification.classification_metrics(labels, predictions)[self.metric]
    if np.round(value, 12) > np.round(self.value, 12):
      self.value, self.params = value, dict(params)


def loop_giaem(errors, labels, anomaly_thresholds, tumor_indices, metric='f1'):
  best = _Best(metric)
  for t in np.asarray(anomaly_thresholds, np.float32):
    fraction = np.mean(errors >= t, axis=1)
    for ti in np.asarray(tumor_indices, np.float64):
      best.offer(labels, (fraction >= ti).astype(int),
                 dict(anomaly_threshold=float(t), tumor_index=float(ti)))
  return best.params, best.value


def largest_cluster_fraction(error_row, anomaly_threshold, eps, min_samples, h, w,
                             positions=None):
  """scikit-learn DBSCAN on one image's anomalous pixels (positions: pixel_positions(h, w),
  made once by a caller that calls this for many images)."""
  points = np.flatnonzero(error_row >= np.float32(anomaly_threshold))
  if points.size == 0:
    return 0.0
  if positions is None:
    positions = pixel_features.pixel_positions(h, w)
  features = np.column_stack([np.asarray(error_row[points], np.float64), positions[points]])
  found = cluster.DBSCAN(eps=eps, min_samples=min_samples).fit(features).labels_
  found = found[found >= 0]
  return np.bincount(found).max() / (h * w) if found.size else 0.0


def loop_dbscan(errors, labels, anomaly_thresholds, eps_values, min_samples_values,
                tumor_indices, metric='f1', image_shape=None):
  h, w = pixel_features.image_shape(errors.shape[1], image_shape)
  positions = pixel_features.pixel_positions(h, w)
  best = _Best(metric)
  for t in np.asarray(anomaly_thresholds, np.float32):
    for eps in eps_values:
      for min_samples in min_samples_values:
        score = np.array([largest_cluster_fraction(row, t, eps, min_samples, h, w, positions)
                          for row in errors])
        for ti in tumor_indices:
          best.offer(labels, (score >= ti).astype(int),
                     dict(anomaly_threshold=float(t), eps=float(eps),
                          min_samples=int(min_samples), tumor_index=float(ti)))
  return best.params, best.value


def anomalous_share(error_row, h, w, max_iter=100):
  """scikit-learn KMeans(2) on one image, started like kmeans_image (coarse stage first)."""
  features = pixel_features.pixel_features(error_row, h, w)
  factor = kmeans_image.coarse_factor(h, w)
  if factor > 1:
    pooled = error_row.reshape(h // factor, factor, w // factor, factor).astype(
        np.float32).mean(axis=(1, 3)).reshape(-1)
    coarse = np.stack([pooled, *pixel_features.pixel_grid(h, w, factor)], axis=1).astype(np.float64)
  else:
    coarse = features
  first = np.argmax(coarse[:, 0])
  second = np.argmax(np.sum((coarse - coarse[first]) ** 2, axis=1))
  init = coarse[[first, second]]
  if factor > 1:
    init = cluster.KMeans(2, init=init, n_init=1, tol=0, max_iter=max_iter).fit(
        coarse).cluster_centers_
  fitted = cluster.KMeans(2, init=init, n_init=1, tol=0, max_iter=max_iter).fit(features)
  labels = fitted.labels_
  means = [np.mean(error_row[labels == k], dtype=np.float64) for k in (0, 1)]
  second_is_anomalous, tie = kmeans_image.anomalous_cluster(*means)
  return 0.0 if tie else np.mean(labels == int(second_is_anomalous))


def loop_kmeans_image_scores(errors, image_shape=None, max_iter=100) -> np.ndarray:
  """float64 (N,): anomalous_share of every image, the rule's scores."""
  h, w = pixel_features.image_shape(errors.shape[1], image_shape)
  # One thread per fit: scikit-learn's OpenMP pool gains nothing on one small image, and
  # slows down many times over when other processes share the cores (same results).
  with threadpoolctl.threadpool_limits(1):
    return np.array([anomalous_share(row, h, w, max_iter) for row in errors])


def loop_cutoff(labels, score, tumor_indices, metric='f1'):
  """(params, value): the best tumor_index for one score per image."""
  best = _Best(metric)
  for ti in tumor_indices:
    best.offer(labels, (score >= ti).astype(int), dict(tumor_index=float(ti)))
  return best.params, best.value


def global_scores(errors, anomaly_threshold, max_iter=300):
  """scikit-learn KMeans(2) over the thresholded rows, started like kmeans_global."""
  x = (errors >= np.float32(anomaly_threshold)).astype(np.float64)
  mass = x.sum(axis=1)
  high = kmeans_global.start_members(mass)
  mean_all = x.mean(axis=0)
  init = np.stack([x[~high].mean(axis=0) if (~high).any() else mean_all,
                   x[high].mean(axis=0) if high.any() else mean_all])
  with warnings.catch_warnings():  # identical rows: one distinct cluster is expected
    warnings.simplefilter('ignore', ConvergenceWarning)
    fitted = cluster.KMeans(2, init=init, n_init=1, tol=0, max_iter=max_iter,
                            algorithm='lloyd').fit(x)
  centers = fitted.cluster_centers_
  tumour, healthy = centers[kmeans_global._tumour_first(centers)]
  d_t = np.sqrt(np.sum((x - tumour) ** 2, axis=1))
  d_h = np.sqrt(np.sum((x - healthy) ** 2, axis=1))
  den = d_t + d_h
  return np.where(den > 0, d_h / np.where(den > 0, den, 1.0), 0.5)


def loop_global_kmeans(errors, labels, anomaly_thresholds, alphas, metric='f1', max_iter=300):
  best = _Best(metric)
  for t in np.asarray(anomaly_thresholds, np.float32):
    score = global_scores(errors, t, max_iter)
    for alpha in alphas:
      best.offer(labels, (score >= 1.0 / (1.0 + alpha)).astype(int),
                 dict(anomaly_threshold=float(t), alpha=float(alpha)))
  return best.params, best.value


def benchmark(errors: np.ndarray, labels: np.ndarray, config) -> Dict[str, Dict[str, float]]:
  """Seconds of each config.rules' full validation grid search (config: an anomaly config,
  evaluate.default_anomaly_config), fast path vs the loop.

  Both run in full on the same maps (no extrapolation) and must select the same
  hyperparameters. Returns {rule: {fast_s, loop_s, speedup, fast_cpu_s, loop_cpu_s,
  cpu_speedup, same_selection}}, and for single-image KMeans max_score_difference (the
  largest difference of an image's score); CPU seconds (process time, all threads) are the
  fairer comparison on a shared machine.
  """
  errors = pixel_features.check_errors(errors)
  labels = np.asarray(labels)
  metric = config.selection_metric
  shape = pixel_features.image_shape(errors.shape[1], None)  # (square maps)
  tumor_indices = evaluate.tumor_index_grid(config)
  thresholds = evaluate.anomaly_threshold_grid(config.num_anomaly_thresholds)
  global_thresholds = evaluate.anomaly_threshold_grid(config.num_global_thresholds)
  alphas = evaluate.alpha_grid(config)
  dbscan_grid = (np.sort(np.asarray(config.dbscan_anomaly_thresholds)), config.dbscan_eps,
                 config.dbscan_min_samples, tumor_indices, metric, shape)
  loop_scores = {}

  def loop_kmeans():  # (its scores kept, to be compared below)
    loop_scores['kmeans'] = loop_kmeans_image_scores(errors, shape, config.kmeans_max_iter)
    return loop_cutoff(labels, loop_scores['kmeans'], tumor_indices, metric)

  searches = {  # rule: (fast search -> SearchResult, loop -> (params, value))
      'giaem': (
          lambda: grid_search.search_giaem(errors, labels, thresholds, tumor_indices, metric),
          lambda: loop_giaem(errors, labels, thresholds, tumor_indices, metric)),
      'dbscan': (
          lambda: grid_search.search_dbscan(errors, labels, *dbscan_grid),
          lambda: loop_dbscan(errors, labels, *dbscan_grid)),
      'kmeans': (
          lambda: grid_search.search_kmeans_image(errors, labels, tumor_indices, metric, shape,
                                                  config.kmeans_max_iter),
          loop_kmeans),
      'global_kmeans': (
          lambda: grid_search.search_global_kmeans(errors, labels, global_thresholds, alphas,
                                                   metric, None, config.global_max_iter),
          lambda: loop_global_kmeans(errors, labels, global_thresholds, alphas, metric,
                                     config.global_max_iter)),
  }

  def timed(fn):
    """(result, wall seconds, CPU seconds of all threads of this process)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - start, time.process_time() - start_cpu

  out = {}
  for rule in config.rules:
    if rule not in searches:
      raise ValueError(f'unknown anomaly rule {rule!r}')
    fast_search, loop_search = searches[rule]
    found, fast, fast_cpu = timed(fast_search)
    (params, _), loop, loop_cpu = timed(loop_search)
    out[rule] = dict(fast_s=fast, loop_s=loop, speedup=loop / fast, fast_cpu_s=fast_cpu,
                     loop_cpu_s=loop_cpu, cpu_speedup=loop_cpu / max(fast_cpu, 1e-9),
                     same_selection=found.params == params)
  if 'kmeans' in out:
    # Its one grid is the cut-off: where its scores hardly tell the classes apart (as on these
    # maps) many cut-offs tie, and both pick the first whatever their scores. So the scores are
    # compared too (the fast ones again, untimed).
    fast_scores = kmeans_image.kmeans_image_scores(errors, shape, config.kmeans_max_iter)
    out['kmeans']['max_score_difference'] = float(
        np.abs(fast_scores - loop_scores['kmeans']).max(initial=0.0))
  return out
