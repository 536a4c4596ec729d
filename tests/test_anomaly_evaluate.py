"""evaluate_anomaly_rules end to end on small synthetic error maps."""
import math

import numpy as np
import pytest

from brainjax.anomaly import dbscan, evaluate, giaem, kmeans_global, localisation, synthetic_maps
from brainjax.evaluation import classification


@pytest.fixture(scope='module')
def data():
  val = synthetic_maps.synthetic_error_maps(40, 32, seed=11)
  test = synthetic_maps.synthetic_error_maps(30, 32, seed=12)
  return val, test


def _small_config():
  config = evaluate.default_anomaly_config()
  config.num_anomaly_thresholds = 20
  config.num_global_thresholds = 10
  config.num_tumor_index = 30
  config.num_alpha = 20
  config.dbscan_anomaly_thresholds = (0.6,)
  config.dbscan_eps = (2.5 / 32,)
  config.dbscan_min_samples = (4,)
  return config


def test_flat_metrics_for_every_rule(data):
  (val_e, val_y, _), (test_e, test_y, test_m) = data
  out, fitted, scores = evaluate.evaluate_anomaly_rules(val_e, val_y, test_e, test_y,
                                                        _small_config(), test_masks=test_m)
  for prefix in ('giaem', 'dbscan', 'kmeans', 'global_kmeans'):
    for key in ('accuracy', 'precision', 'recall', 'f1', 'macro_f1', 'auroc', 'tp',
                'val_f1', 'dice', 'iou', 'seconds'):
      assert f'{prefix}_{key}' in out, f'{prefix}_{key}'
    assert 0 <= out[f'{prefix}_f1'] <= 1 and 0 <= out[f'{prefix}_dice'] <= 1
    assert out[f'{prefix}_tp'] + out[f'{prefix}_fn'] == int(test_y.sum())
  assert {'dbscan_eps', 'dbscan_min_samples', 'dbscan_anomaly_threshold', 'dbscan_tumor_index',
          'global_kmeans_alpha', 'giaem_tumor_index', 'kmeans_tumor_index'} <= set(out)
  selected = out.pop('selected_rule')
  assert all(isinstance(v, (int, float)) for v in out.values())
  assert out[f'{selected}_val_f1'] == max(out[f'{r}_val_f1'] for r in evaluate.RULES)
  # the saved centroids reproduce the reported global KMeans test numbers
  assert fitted['global_kmeans_centroids'].shape == (2, 32 * 32)
  assert fitted['global_kmeans_centroids'].dtype == np.float64  # (a float32 copy can flip a tie)
  rule = kmeans_global.global_kmeans(test_e, out['global_kmeans_anomaly_threshold'],
                                     out['global_kmeans_alpha'],
                                     centroids=fitted['global_kmeans_centroids'])
  assert out['global_kmeans_f1'] == classification.classification_metrics(
      test_y, rule.prediction, rule.score)['f1']
  # the reported test numbers are those of the rule applied with the chosen values
  rule = giaem.giaem(test_e, out['giaem_anomaly_threshold'], out['giaem_tumor_index'])
  expected = classification.classification_metrics(test_y, rule.prediction, rule.score)
  assert out['giaem_f1'] == expected['f1'] and out['giaem_auroc'] == expected['auroc']
  # each rule's returned test score is the one its ROC AUC was computed from
  assert set(scores) == {f'{r}_score' for r in evaluate.RULES}
  np.testing.assert_array_equal(scores['giaem_score'], rule.score)
  for r in evaluate.RULES:
    assert out[f'{r}_auroc'] == classification.auroc(test_y, scores[f'{r}_score']), r
  rule = dbscan.dbscan(test_e, out['dbscan_anomaly_threshold'], out['dbscan_eps'],
                       out['dbscan_min_samples'], out['dbscan_tumor_index'])
  assert out['dbscan_accuracy'] == classification.classification_metrics(
      test_y, rule.prediction)['accuracy']
  assert out['dbscan_dice'] == localisation.mean_localisation(
      rule.region & (rule.prediction == 1)[:, None], test_m, test_y)['dice']


def test_a_missed_tumour_localises_nothing(data):
  # The region scored is the one predict writes: empty on a slice the rule calls healthy, however
  # well its anomalous pixels cover the tumour.
  (val_e, val_y, _), (test_e, test_y, test_m) = data
  config = _small_config()
  config.rules = ('giaem',)
  out, _, _ = evaluate.evaluate_anomaly_rules(val_e, val_y, test_e, test_y, config,
                                              test_masks=test_m)
  rule = giaem.giaem(test_e, out['giaem_anomaly_threshold'], out['giaem_tumor_index'])
  missed = (test_y == 1) & (rule.prediction == 0)
  covered = localisation.dice_iou(rule.region, test_m)[0] > 0
  assert (missed & covered).any()  # (else this test shows nothing)
  dice, _ = localisation.dice_iou(rule.tumour_region(), test_m)
  assert (dice[missed] == 0).all()
  assert out['giaem_dice'] == pytest.approx(dice[test_y == 1].mean())


def test_subset_of_rules_without_masks(data):
  (val_e, val_y, _), (test_e, test_y, _) = data
  config = _small_config()
  config.rules = ('giaem',)
  config.selection_metric = 'balanced_accuracy'
  out, fitted, scores = evaluate.evaluate_anomaly_rules(val_e, val_y, test_e, test_y, config)
  assert out.pop('selected_rule') == 'giaem' and fitted == {}
  assert set(scores) == {'giaem_score'}
  assert set(k.split('_')[0] for k in out) == {'giaem'}
  assert 'giaem_val_balanced_accuracy' in out and 'giaem_dice' not in out
  assert not math.isnan(out['giaem_auroc'])


def test_default_config_grids():
  config = evaluate.default_anomaly_config()
  grid = evaluate.anomaly_threshold_grid(config.num_anomaly_thresholds)
  assert grid.size == 100 and grid[0] == 0 and grid[-1] == np.float32(0.99)
  assert evaluate.tumor_index_grid(config).size == 100
  alphas = evaluate.alpha_grid(config)
  assert alphas.size == 100 and alphas[0] == pytest.approx(0.25)


@pytest.mark.parametrize('change, message', [
    (dict(rules=('giaem', 'svm')), r'anomaly.rules=.*choose one or more'),
    (dict(rules=()), r'anomaly.rules=\(\)'),
    (dict(tumor_index_spacing='cubic'), "anomaly.tumor_index_spacing='cubic': it must be"),
    (dict(tumor_index_min=2.0, tumor_index_max=3.0),
     r'anomaly.tumor_index_min=2.0, tumor_index_max=3.0, num_tumor_index=30: .*\(0, 1\]'),
    (dict(dbscan_anomaly_thresholds=(0.5, 1.5)), r'must be in \[0, 1\)'),
    (dict(dbscan_eps=(0.0,)), r'anomaly.dbscan_eps=\(0.0,\), .*: eps must be positive'),
    (dict(dbscan_min_samples=(True,)), r'anomaly.dbscan_min_samples=\(True,\): it must be numbers'),
    (dict(global_max_iter=0), 'global_max_iter=0'),
    (dict(dbscan_min_samples=('abc',)), r"dbscan_min_samples=\('abc',\): it must be numbers"),
    (dict(dbscan_eps=('(nan,)',)), r"anomaly.dbscan_eps=\('\(nan,\)',\): it must be numbers"),
    (dict(alpha_max=float('inf')), 'anomaly.alpha_min=0.25, alpha_max=inf, num_alpha=20: '),
    (dict(num_latent_samples=10 ** 9), r'num_latent_samples=1000000000: .*\[1, 1000\]'),
    (dict(kmeans_max_iter=2 ** 31), 'kmeans_max_iter=2147483648'),
    (dict(num_anomaly_thresholds=10 ** 12),
     r'num_anomaly_thresholds=1000000000000: .*\[1, 10000\]'),
    (dict(num_global_thresholds=0), 'num_global_thresholds=0'),
    (dict(num_tumor_index=10 ** 12), 'num_tumor_index=1000000000000'),
    (dict(num_alpha=10 ** 12), 'num_alpha=1000000000000'),
    (dict(selection_metric='auc'), 'selection_metric'),
])
def test_bad_config(data, change, message):
  (val_e, val_y, _), (test_e, test_y, _) = data
  config = _small_config()
  config.update(change)
  with pytest.raises(ValueError, match=message):
    evaluate.evaluate_anomaly_rules(val_e, val_y, test_e, test_y, config)


def test_mismatched_inputs(data):
  (val_e, val_y, _), (test_e, test_y, _) = data
  with pytest.raises(ValueError, match='pixels per image'):
    evaluate.evaluate_anomaly_rules(val_e, val_y, test_e[:, :100], test_y, _small_config())
  with pytest.raises(ValueError, match='labels'):
    evaluate.evaluate_anomaly_rules(val_e, val_y[:-1], test_e, test_y, _small_config())


def test_flat_masks_give_the_localisation_of_image_shaped_ones(data):
  (val_e, val_y, _), (test_e, test_y, test_m) = data
  config = _small_config()
  config.rules = ('giaem', 'kmeans')
  shaped, _, _ = evaluate.evaluate_anomaly_rules(val_e, val_y, test_e, test_y, config, test_m)
  flat, _, _ = evaluate.evaluate_anomaly_rules(val_e, val_y, test_e, test_y, config,
                                               test_m.reshape(len(test_m), -1))
  for key in ('giaem_dice', 'giaem_iou', 'kmeans_dice', 'kmeans_f1'):
    assert flat[key] == shaped[key], key
  with pytest.raises(ValueError, match=r'test masks must be \(N, H, W\) or \(N, H\*W\)'):
    evaluate.evaluate_anomaly_rules(val_e, val_y, test_e, test_y, config, test_m[..., None])


def test_select_rule_takes_the_best_validation_value_first_on_ties():
  metrics = {'giaem_val_f1': 0.5, 'dbscan_val_f1': 0.7, 'kmeans_val_f1': 0.7,
             'global_kmeans_val_f1': None}
  assert evaluate.select_rule(metrics) == 'dbscan'
  assert evaluate.select_rule({'kmeans_val_accuracy': 0.2}, 'accuracy') == 'kmeans'
  with pytest.raises(ValueError, match='were the anomaly rules evaluated'):
    evaluate.select_rule({'giaem_f1': 0.9})


def test_the_largest_grid_size_is_accepted():
  config = evaluate.default_anomaly_config()
  for field in ('num_anomaly_thresholds', 'num_global_thresholds', 'num_tumor_index',
                'num_alpha'):
    config[field] = evaluate.MAX_GRID_SIZE
  evaluate.check_config(config)  # (at most MAX_GRID_SIZE values: that many is allowed)


@pytest.mark.parametrize('change, message', [
    (dict(dbscan_anomaly_thresholds=(0.5, 1.0)), r'must be in \[0, 1\)'),
    (dict(dbscan_min_samples=(1e30,)), r'min_samples must be integers in \[1, 2\*\*31\)'),
    (dict(dbscan_anomaly_thresholds=tuple(np.linspace(0, 0.9, 100)),
          dbscan_eps=tuple(np.linspace(0.01, 0.02, 11)), dbscan_min_samples=(4, 8, 12, 16, 20,
                                                                             24, 28, 32, 36, 40)),
     r'100 x 11 x 10 \(thresholds x eps x min_samples\) DBSCAN grid points, over 10000'),
    (dict(tumor_index_min=0.0, tumor_index_spacing='linear'), r'tumor_index_min=0.0'),
    (dict(tumor_index_min=0.0), r'tumor_index_min=0.0'),
])
def test_values_past_the_limits_are_refused(change, message):
  config = evaluate.default_anomaly_config()
  config.update(change)
  with pytest.raises(ValueError, match=message):
    evaluate.check_config(config)
