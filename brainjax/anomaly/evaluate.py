"""Validation grid search and test evaluation of the four anomaly rules.

`evaluate_anomaly_rules` is what a `cvae_cls` run calls after training: for each
rule it picks the hyperparameters on the validation errors, applies them once to
the test errors and returns flat metrics prefixed giaem_, dbscan_, kmeans_ and
global_kmeans_ (e.g. dbscan_f1, dbscan_auroc, dbscan_eps), plus `selected_rule`:
the rule with the best validation value, the one a prediction applies by default; and each
rule's continuous test score, the one its ROC AUC is computed from.
"""
import time
from typing import Any, Dict, Optional, Tuple

import ml_collections
import numpy as np
from absl import logging

from brainjax.anomaly import dbscan as dbscan_rule
from brainjax.anomaly import giaem as giaem_rule
from brainjax.anomaly import grid_search
from brainjax.anomaly import kmeans_global as global_rule
from brainjax.anomaly import kmeans_image as kmeans_rule
from brainjax.anomaly import localisation
from brainjax.anomaly import pixel_features
from brainjax.evaluation import classification

RULES = ('giaem', 'dbscan', 'kmeans', 'global_kmeans')
# Each rule's hyperparameters: what its grid search selects, and what a run's metrics.json
# keeps as '<rule>_<name>'.
RULE_PARAMS = {
    'giaem': ('anomaly_threshold', 'tumor_index'),
    'dbscan': ('anomaly_threshold', 'eps', 'min_samples', 'tumor_index'),
    'kmeans': ('tumor_index',),
    'global_kmeans': ('anomaly_threshold', 'alpha'),
}
# What evaluate_anomaly_rules fits beyond its metrics (a run keeps them as <name>.npy).
FITTED_ARRAYS = ('global_kmeans_centroids',)
# The most values one grid axis may have (the study's have 100): a grid search holds an array
# per image and value, and 10**12 values were a MemoryError traceback.
MAX_GRID_SIZE = 10_000
# Latent samples per error map: 1000 reconstructions of every slice are hours on a CPU (10**9
# ran as if hung).
MAX_LATENT_SAMPLES = 1000
_GRID_SIZES = ('num_anomaly_thresholds', 'num_global_thresholds', 'num_tumor_index', 'num_alpha')


def default_anomaly_config() -> ml_collections.ConfigDict:
  """Grids and options of the anomaly stage.

  The study searched 100 x 100 grids over (anomaly_threshold, tumor_index) and
  (anomaly_threshold, alpha); GIAEM, single-image KMeans and the alpha / tumor_index
  axes use those sizes here. Global KMeans defaults to 25 thresholds (one KMeans
  each, about 0.1-0.2 s per threshold on 3000 slices here; set
  num_global_thresholds = 100 for the paper's grid) and DBSCAN to a
  4 x 2 x 2 outer grid (thresholds x eps x min_samples; the study gave up tuning
  DBSCAN, so it has no grid to match).
  """
  c = ml_collections.ConfigDict()
  c.rules = RULES
  c.selection_metric = 'f1'  # any of classification.METRIC_NAMES
  # Error maps of the mean reconstruction (1, the study's), or each pixel's absolute error
  # averaged over this many reconstructions of latent samples, then normalised.
  c.num_latent_samples = 1
  # anomaly_threshold grid: k / num for k = 0 .. num - 1 (0.00, 0.01, ..., 0.99).
  c.num_anomaly_thresholds = 100
  # tumor_index grid: fraction of the image area; geometric so that small
  # fractions (a DBSCAN cluster is ~1% of a slice) are resolved as well as large.
  c.num_tumor_index = 100
  c.tumor_index_min = 1e-4
  c.tumor_index_max = 1.0
  c.tumor_index_spacing = 'geometric'  # or 'linear' (the study's percentages)
  # DBSCAN outer grid; eps in feature units, one pixel step = 1/128 for 128 px
  # slices (0.015 ~ 1.9 px, 0.025 ~ 3.2 px); the cost grows with eps**2 (window). Another
  # data.image_size needs other values (at 64 px, 0.015 is under one step: no neighbours).
  c.dbscan_anomaly_thresholds = (0.5, 0.6, 0.7, 0.8)
  c.dbscan_eps = (0.015, 0.025)
  c.dbscan_min_samples = (4, 8)
  # Single-image KMeans.
  c.kmeans_max_iter = 100
  # Global KMeans: thresholds k / num, alpha geometric in [alpha_min, alpha_max].
  c.num_global_thresholds = 25
  c.num_alpha = 100
  c.alpha_min = 0.25
  c.alpha_max = 4.0
  c.global_max_iter = 300
  return c


def anomaly_threshold_grid(num: int) -> np.ndarray:
  if num < 1:
    raise ValueError(f'the number of anomaly thresholds must be >= 1, got {num}')
  return (np.arange(num) / num).astype(np.float32)


def tumor_index_grid(config) -> np.ndarray:
  lo, hi, num = config.tumor_index_min, config.tumor_index_max, config.num_tumor_index
  if num < 1 or not 0 < lo <= hi <= 1:  # a fraction of the image
    raise ValueError(f'anomaly.tumor_index_min={lo}, tumor_index_max={hi}, num_tumor_index={num}: '
                     'the tumour indices are fractions in (0, 1], min <= max')
  if config.tumor_index_spacing == 'geometric':
    return np.geomspace(lo, hi, num)
  if config.tumor_index_spacing == 'linear':
    return np.linspace(lo, hi, num)
  raise ValueError(f'anomaly.tumor_index_spacing={config.tumor_index_spacing!r}: it must be '
                   'geometric or linear')


def alpha_grid(config) -> np.ndarray:
  if config.num_alpha < 1 or not 0 < config.alpha_min <= config.alpha_max < float('inf'):
    raise ValueError(f'anomaly.alpha_min={config.alpha_min}, alpha_max={config.alpha_max}, '
                     f'num_alpha={config.num_alpha}: the alphas need 0 < min <= max < inf')
  return np.geomspace(config.alpha_min, config.alpha_max, config.num_alpha)


def check_config(config) -> None:
  """A ValueError for anomaly settings no evaluation can use: cvae_cls checks them before it
  trains, not after."""
  rules = tuple(config.rules)
  if not rules or set(rules) - set(RULES):
    raise ValueError(f'anomaly.rules={rules!r}: choose one or more of {RULES}, as a tuple '
                     '(e.g. --config.anomaly.rules="(\'giaem\', \'dbscan\')")')
  if config.selection_metric not in classification.METRIC_NAMES:
    raise ValueError(f'anomaly.selection_metric={config.selection_metric!r}: choose from '
                     f'{classification.METRIC_NAMES}')
  for field in _GRID_SIZES:
    if not 1 <= config[field] <= MAX_GRID_SIZE:
      raise ValueError(f'anomaly.{field}={config[field]}: it must be an integer in [1, '
                       f'{MAX_GRID_SIZE}]')
  anomaly_threshold_grid(config.num_anomaly_thresholds)
  anomaly_threshold_grid(config.num_global_thresholds)
  tumor_index_grid(config)
  alpha_grid(config)
  for field in ('dbscan_anomaly_thresholds', 'dbscan_eps', 'dbscan_min_samples'):
    try:  # (a flag's word, e.g. abc or (nan,), is a string: a message naming no field)
      if any(isinstance(v, bool) for v in np.ravel(np.asarray(config[field], object))):
        raise TypeError  # (True would be taken as 1)
      np.asarray(config[field], np.float64)
    except (TypeError, ValueError, OverflowError):  # (Overflow: an int past float64's range)
      raise ValueError(f'anomaly.{field}={config[field]!r}: it must be numbers, e.g. '
                       f'{tuple(default_anomaly_config()[field])}') from None
  thresholds = pixel_features.check_grid(np.sort(np.asarray(config.dbscan_anomaly_thresholds)),
                                         'anomaly.dbscan_anomaly_thresholds')
  if thresholds.min() < 0 or thresholds.max() >= 1:  # normalised errors lie in [0, 1]
    raise ValueError(f'anomaly.dbscan_anomaly_thresholds={config.dbscan_anomaly_thresholds}: '
                     'they must be in [0, 1)')
  try:
    eps, min_samples = dbscan_rule.check_params(config.dbscan_eps, config.dbscan_min_samples)
  except ValueError as error:
    raise ValueError(f'anomaly.dbscan_eps={config.dbscan_eps}, dbscan_min_samples='
                     f'{config.dbscan_min_samples}: {error}') from None
  if thresholds.size * eps.size * min_samples.size > MAX_GRID_SIZE:  # (one score per image each)
    raise ValueError(f'anomaly.dbscan_*: {thresholds.size} x {eps.size} x {min_samples.size} '
                     f'(thresholds x eps x min_samples) DBSCAN grid points, over {MAX_GRID_SIZE}')
  for field in ('kmeans_max_iter', 'global_max_iter'):
    if not 1 <= config[field] < 2 ** 31:  # (jitted loops count in int32: an OverflowError)
      raise ValueError(f'anomaly.{field}={config[field]}: it must be an integer in [1, 2**31)')
  if not 1 <= config.num_latent_samples <= MAX_LATENT_SAMPLES:
    raise ValueError(f'anomaly.num_latent_samples={config.num_latent_samples}: it must be an '
                     f'integer in [1, {MAX_LATENT_SAMPLES}] (each is one more reconstruction of '
                     'every slice)')


def _global_codes(codes, config):
  """The global grid's codes from the GIAEM grid's when it is a subset (it is by default)."""
  if codes is None:
    return None
  return pixel_features.remap_codes(
      codes, anomaly_threshold_grid(config.num_anomaly_thresholds),
      anomaly_threshold_grid(config.num_global_thresholds))


def apply_rule(rule: str, errors: np.ndarray, params: Dict[str, float],
               image_shape=None, kmeans_max_iter: int = 100,
               global_centroids: Optional[np.ndarray] = None) -> pixel_features.RuleOutput:
  """One rule with its selected hyperparameters (RULE_PARAMS[rule]) on (N, H*W) errors.

  Global KMeans also needs the (2, H*W) centroids (tumour first) fitted on validation.
  """
  if rule == 'giaem':
    return giaem_rule.giaem(errors, params['anomaly_threshold'], params['tumor_index'])
  if rule == 'dbscan':
    return dbscan_rule.dbscan(errors, params['anomaly_threshold'], params['eps'],
                              int(params['min_samples']), params['tumor_index'], image_shape)
  if rule == 'kmeans':
    return kmeans_rule.kmeans_image(errors, params['tumor_index'], image_shape,
                                    max_iter=kmeans_max_iter)
  if rule == 'global_kmeans':
    if global_centroids is None:
      raise ValueError('the global_kmeans rule needs the centroids fitted on validation')
    return global_rule.global_kmeans(errors, params['anomaly_threshold'], params['alpha'],
                                     centroids=global_centroids)
  raise ValueError(f'unknown anomaly rule {rule!r}; choose from {RULES}')


def _search(rule, config, val_errors, val_labels, shape, codes) -> grid_search.SearchResult:
  """One rule's validation grid search. codes: threshold codes of val_errors for the GIAEM
  grid, or None."""
  metric = config.selection_metric
  tumor_indices = tumor_index_grid(config)
  if rule == 'giaem':
    return grid_search.search_giaem(
        val_errors, val_labels, anomaly_threshold_grid(config.num_anomaly_thresholds),
        tumor_indices, metric, codes)
  if rule == 'dbscan':
    return grid_search.search_dbscan(
        val_errors, val_labels, np.sort(np.asarray(config.dbscan_anomaly_thresholds)),
        config.dbscan_eps, config.dbscan_min_samples, tumor_indices, metric, shape)
  if rule == 'kmeans':
    return grid_search.search_kmeans_image(
        val_errors, val_labels, tumor_indices, metric, shape, config.kmeans_max_iter)
  if rule == 'global_kmeans':
    return grid_search.search_global_kmeans(
        val_errors, val_labels, anomaly_threshold_grid(config.num_global_thresholds),
        alpha_grid(config), metric, _global_codes(codes, config), config.global_max_iter)
  raise ValueError(f'unknown anomaly rule {rule!r}; choose from {RULES}')


def select_rule(metrics: Dict[str, Any], selection_metric: str = 'f1') -> str:
  """The rule whose `<rule>_val_<selection_metric>` is best; ties go to the first in RULES.

  A rule without that value counts as worst; a ValueError when no rule has one.
  """
  rules = [r for r in RULES if metrics.get(f'{r}_val_{selection_metric}') is not None]
  if not rules:
    raise ValueError(f'no <rule>_val_{selection_metric} value: were the anomaly rules evaluated?')
  values = [round(float(metrics[f'{r}_val_{selection_metric}']), 12) for r in rules]
  return rules[int(np.argmax(values))]


def evaluate_anomaly_rules(
    val_errors: np.ndarray, val_labels: np.ndarray, test_errors: np.ndarray,
    test_labels: np.ndarray, config: ml_collections.ConfigDict,
    test_masks: Optional[np.ndarray] = None
) -> Tuple[Dict[str, Any], Dict[str, np.ndarray], Dict[str, np.ndarray]]:
  """(flat metrics of every rule in config.rules (see module docstring), fitted arrays,
  test scores).

  The fitted arrays are what applying a rule to new slices needs beyond its
  hyperparameters: {'global_kmeans_centroids': (2, H*W), tumour first} when the
  global KMeans rule ran. The test scores are {'<rule>_score': (N,) float64}, what
  `<rule>_auroc` is computed from (a cvae_cls run keeps them for the study's ROC curves).

  Keys per rule prefix p: the chosen hyperparameters (p_anomaly_threshold,
  p_tumor_index, p_eps, p_min_samples, p_alpha as applicable), p_val_<metric>,
  the test metrics of classification_metrics (p_accuracy ... p_macro_f1,
  p_tn/fp/fn/tp, p_auroc of the rule's continuous score), p_dice / p_iou (mean
  over tumour test images) when test_masks are given, and p_seconds.
  """
  val_errors = pixel_features.check_errors(val_errors, 'val_errors')
  test_errors = pixel_features.check_errors(test_errors, 'test_errors')
  if val_errors.shape[1] != test_errors.shape[1]:
    raise ValueError(f'val and test errors have {val_errors.shape[1]} and '
                     f'{test_errors.shape[1]} pixels per image')
  grid_search.check_labels(val_labels, len(val_errors))
  grid_search.check_labels(test_labels, len(test_errors))
  if test_masks is not None and len(test_masks) != len(test_errors):
    raise ValueError(f'{len(test_masks)} test masks for {len(test_errors)} test images')
  if test_masks is not None and np.ndim(test_masks) not in (2, 3):
    raise ValueError(f'test masks must be (N, H, W) or (N, H*W), got shape {np.shape(test_masks)}')
  # (H, W): that of (N, H, W) masks, else square
  shape = pixel_features.image_shape(
      val_errors.shape[1], np.shape(test_masks)[1:] if np.ndim(test_masks) == 3 else None)
  check_config(config)
  rules = tuple(config.rules)
  codes = None
  if 'giaem' in rules or 'global_kmeans' in rules:  # computed once, shared
    codes = pixel_features.threshold_codes(
        val_errors, anomaly_threshold_grid(config.num_anomaly_thresholds))
  results, fitted, scores = {}, {}, {}
  for rule in rules:
    start = time.perf_counter()
    found = _search(rule, config, val_errors, val_labels, shape, codes)
    out = apply_rule(rule, test_errors, found.params, shape, config.kmeans_max_iter,
                     found.extra.get('centroids'))
    metrics = classification.classification_metrics(test_labels, out.prediction, out.score)
    metrics[f'val_{found.metric}'] = found.value
    metrics.update(found.params)
    if test_masks is not None:
      metrics.update(localisation.mean_localisation(out.tumour_region(), test_masks, test_labels))
    metrics['seconds'] = time.perf_counter() - start
    logging.info('anomaly rule %s: %s val %s=%.4f, test f1=%.4f auroc=%.4f (%.1f s)', rule,
                 found.params, found.metric, found.value, metrics['f1'], metrics['auroc'],
                 metrics['seconds'])
    results.update({f'{rule}_{k}': v for k, v in metrics.items()})
    scores[f'{rule}_score'] = np.asarray(out.score, np.float64)
    if rule == 'global_kmeans':
      # Saved as used (float64): a float32 copy could tip a row at exactly equal distances
      # (score 0.5, a tumour at alpha 1) to the other side in a later prediction.
      fitted[FITTED_ARRAYS[0]] = np.asarray(found.extra['centroids'], np.float64)
  results['selected_rule'] = select_rule(results, config.selection_metric)
  logging.info('Selected rule (best validation %s): %s; predict applies it by default.',
               config.selection_metric, results['selected_rule'])
  return results, fitted, scores
