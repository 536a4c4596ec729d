"""The Figure 4/5-like PNG."""
import numpy as np
import pytest
from PIL import Image

from brainjax.anomaly import figures


def test_writes_png(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.array([1, 0, 1, 0, 0])
  picked = figures.pick_examples(labels, per_class=2)
  assert list(labels[picked]) == [1, 1, 0, 0]
  k = len(picked)
  images = rng.random((k, 16, 16, 1)).astype(np.float32)
  path = figures.save_anomaly_figure(
      str(tmp_path / 'fig.png'), images, images, rng.random((k, 256)), rng.random((k, 256)) > 0.8,
      labels[picked], predictions=np.array([1, 0, 0, 0]), names=list('abcd'), title='GIAEM')
  with Image.open(path) as png:
    assert png.format == 'PNG' and png.size[0] > 300 and png.size[1] > 300
    assert np.asarray(png.convert('L')).std() > 10  # (drawn, not a blank canvas)


def test_a_rules_rerun_leaves_no_stale_figure_or_metrics(tmp_path, cache_dir, monkeypatch):
  # A rerun may change anomaly.rules; the figure of a rule it no longer runs would be stale.
  import os
  from brainjax.tasks import cvae_cls
  from configs import cvae_cls as cvae_config
  config = cvae_config.get_config('real,smoke')
  config.cache_dir = cache_dir
  workdir = str(tmp_path)
  cvae_cls.train_and_evaluate(config, workdir)
  figure = os.path.join(workdir, 'figures', 'anomaly_examples.png')
  centroids = os.path.join(workdir, 'global_kmeans_centroids.npy')
  assert os.path.exists(figure) and os.path.exists(centroids)
  # A rerun refused (other data, fewer epochs, a batch the data cannot fill) changes nothing.
  scores = os.path.join(workdir, 'test_scores.npz')
  outputs = [figure, centroids, scores, os.path.join(workdir, 'metrics.json'),
             os.path.join(workdir, 'eval_ids.json')]
  before = [open(p, 'rb').read() for p in outputs]
  for field, value, message in (('data.num_per_class', 20, 'trained on other data'),
                                ('num_epochs', 1, 'more than num_epochs=1 give'),
                                ('batch_size', 64, 'batch_size=64 is larger than')):
    refused = config.copy_and_resolve_references()
    refused.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=message):
      cvae_cls.train_and_evaluate(refused, workdir)
    assert [open(p, 'rb').read() for p in outputs] == before, field
  config.anomaly.rules = ('kmeans',)
  metrics = cvae_cls.train_and_evaluate(config, workdir)
  assert 'giaem_f1' not in metrics and not os.path.exists(figure)
  assert not os.path.exists(centroids)
  assert set(np.load(scores).files) == {'id', 'label', 'kmeans_score'}  # (the study's ROC)
  metrics_json = os.path.join(workdir, 'metrics.json')
  assert os.path.exists(metrics_json)

  def killed(*args, **kwargs):
    raise KeyboardInterrupt('simulated kill')

  # Killed while the rules run: unfinished, not the old metrics under the new config.
  config.anomaly.rules = ('dbscan',)
  with monkeypatch.context() as patch:
    patch.setattr(cvae_cls.anomaly_evaluate, 'evaluate_anomaly_rules', killed)
    with pytest.raises(KeyboardInterrupt):
      cvae_cls.train_and_evaluate(config, workdir)
  assert not os.path.exists(metrics_json) and not os.path.exists(scores)
  # Killed between the fitted arrays and metrics.json: unfinished, not new centroids beside
  # the old metrics' thresholds (predict would combine them).
  config.anomaly.rules = ('global_kmeans',)
  monkeypatch.setattr(cvae_cls.reporting, 'save_array', killed)
  with pytest.raises(KeyboardInterrupt):
    cvae_cls.train_and_evaluate(config, workdir)
  assert not os.path.exists(metrics_json)


def test_picked_examples_are_distinct_slices():
  labels = np.array([1, 0, 1, 0, 0, 1])
  for seed in range(5):
    picked = figures.pick_examples(labels, per_class=3, seed=seed)
    assert list(picked) == [0, 2, 5, 1, 3, 4]  # every slice of each class, once


def _drawn_figure(tmp_path, figures_made, **kwargs):
  made = figures_made(figures)
  images = np.full((2, 8, 8, 1), 0.25, np.float32)
  errors = np.full((2, 64), 0.5, np.float32)
  regions = np.zeros((2, 64), bool)
  regions[0, :8] = True  # the first row of slice 0
  figures.save_anomaly_figure(str(tmp_path / 'fig.png'), images, images, errors, regions,
                              np.array([1, 0]), predictions=np.array([0, 1]), **kwargs)
  return made[0]


def test_panels_share_a_fixed_scale_and_the_region_is_red(tmp_path, figures_made):
  fig = _drawn_figure(tmp_path, figures_made)
  axes = np.asarray(fig.axes).reshape(2, 4)
  for ax in axes.ravel():
    assert ax.images[0].get_clim() == (0, 1)  # 0.5 errors stay mid-scale, not stretched
  overlay = np.asarray(axes[0, 3].images[0].get_array())
  np.testing.assert_allclose(overlay[0, 0], [0.7, 0.1, 0.1], atol=1e-6)  # 0.4 * grey + 0.6 * red
  np.testing.assert_allclose(overlay[1, 0], [0.25, 0.25, 0.25], atol=1e-6)
  assert axes[0, 0].get_ylabel() == 'tumour\npred healthy'
  assert axes[1, 0].get_ylabel() == 'healthy\npred tumour'


def test_no_slices_is_refused(tmp_path):
  with pytest.raises(ValueError, match='at least one slice'):
    figures.save_anomaly_figure(str(tmp_path / 'fig.png'), np.zeros((0, 8, 8, 1)),
                                np.zeros((0, 8, 8, 1)), np.zeros((0, 64)),
                                np.zeros((0, 64), bool), np.zeros(0))
