"""predict: input walking, preprocessing inverse, skipped rows, maps/regions, metrics."""
import csv
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import types
import warnings
import zipfile

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from sklearn import metrics as sk_metrics
from sklearn.cluster import DBSCAN

from brainjax.anomaly import dbscan
from brainjax.anomaly import maps as anomaly_maps
from brainjax.anomaly import pixel_features
from brainjax.data import image_io
from brainjax.data import inputs
from brainjax.data import layout
from brainjax.data import phantom
from brainjax.data import preprocess
from brainjax.tasks import cnn_cls
from brainjax.tasks import cvae_cls
from brainjax.tasks import predict
from brainjax.tasks import runs
from brainjax.train import checkpoints
from brainjax.train import reporting
from configs import cnn_cls as cnn_config
from configs import cvae_cls as cvae_config
from configs import predict as predict_config

REPO = pathlib.Path(__file__).resolve().parents[1]
# The longer BrainCVAE run of the localisation test (configs/cvae_cls.py:real plus these).
TRAINED_CVAE = {'data.num_per_class': 300, 'num_epochs': 40, 'batch_size': 32, 'num_devices': 1}


def _dice(a, b):
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  total = a.sum() + b.sum()
  return 2.0 * (a & b).sum() / total if total else 1.0


def _png_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def _jpeg_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def _tree_digest(root):
  """Names, sizes and contents of every file under root (proves the input is untouched)."""
  digest = hashlib.sha256()
  for folder, _, names in sorted(os.walk(root)):
    for name in sorted(names):
      path = os.path.join(folder, name)
      digest.update(path.encode())
      digest.update(pathlib.Path(path).read_bytes())
  return digest.hexdigest()


def _read_csv(path):
  with open(path, newline='') as f:
    return {row['path']: row for row in csv.DictReader(f)}


def _npy_bytes(array):
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def _write_config(config, workdir):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=1))


def _untrained_run(task, config_module, workdir, metrics=None):
  """A run directory as training leaves it (config.json, best checkpoint, metrics.json),
  holding random weights: predict's code path without the training time."""
  config = config_module.get_config('real,smoke')
  _write_config(config, workdir)
  model = task.create_model(config)
  shapes = jax.eval_shape(lambda: task.create_train_state(config, model, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)

  def fill(path, leaf):  # no init compilation: random weights, ones elsewhere (BN variances)
    if 'params' in jax.tree_util.keystr(path):
      return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
    return np.ones(leaf.shape, leaf.dtype)
  state = jax.tree_util.tree_map_with_path(fill, shapes)
  with checkpoints.manager(os.path.join(workdir, 'best'), 1) as best:
    checkpoints.save(best, 0, state, {})
  if metrics is not None:
    reporting.write_metrics_json(workdir, metrics)
  return str(workdir)


# Hyperparameters as a cvae_cls run's metrics.json records them (hand-picked here).
RULE_METRICS = {
    'giaem_anomaly_threshold': 0.5, 'giaem_tumor_index': 0.05, 'giaem_val_f1': 0.7,
    'dbscan_anomaly_threshold': 0.7, 'dbscan_eps': 0.02, 'dbscan_min_samples': 4,
    'dbscan_tumor_index': 0.001, 'dbscan_val_f1': 0.6,
    'kmeans_tumor_index': 0.3, 'kmeans_val_f1': 0.5,
    'global_kmeans_anomaly_threshold': 0.5, 'global_kmeans_alpha': 1.0,
    'global_kmeans_val_f1': 0.65,
}


def _train(task, config_module, workdir, cache_dir, variant='real,smoke', **overrides):
  """A trained run in workdir, as `launch.py --config=configs/<task>.py:<variant>` makes it."""
  config = config_module.get_config(variant)
  config.cache_dir = cache_dir
  config.update_from_flattened_dict(overrides)
  _write_config(config, workdir)
  task.train_and_evaluate(config, str(workdir))
  return str(workdir)


@pytest.fixture(scope='module')
def cnn_run(tmp_path_factory):
  return _untrained_run(cnn_cls, cnn_config, tmp_path_factory.mktemp('cnn') / 'run')


@pytest.fixture(scope='module')
def cvae_run(tmp_path_factory):
  run = _untrained_run(cvae_cls, cvae_config, tmp_path_factory.mktemp('cvae') / 'run',
                       RULE_METRICS)
  centroids = np.stack([np.full(128 * 128, 0.4), np.full(128 * 128, 0.1)])  # tumour, healthy
  np.save(os.path.join(run, runs.GLOBAL_CENTROIDS_FILE), centroids)
  return run


def test_a_slice_s_scores_do_not_depend_on_the_slices_predicted_with_it(cnn_run, cvae_run,
                                                                         monkeypatch):
  # XLA rounds each batch shape's program its own way: calls sized to the images gave scores
  # ~1e-7 off the run's own (its test_scores.npz; BrainCNN's full network at 3 against 256).
  images = np.random.default_rng(0).random((12, 128, 128, 1)).astype(np.float32)
  run = runs.load_run(cvae_run)
  every = predict.predict_images(run, images, ('giaem',))
  few = predict.predict_images(run, images[[9, 2, 5]], ('giaem',))
  np.testing.assert_array_equal(few.score, every.score[[9, 2, 5]])
  cnn = runs.task_module('cnn_cls')
  calls = []
  def recorded(model, variables, images, batch_size=256):
    calls.append(batch_size)
    return np.zeros(len(images))
  monkeypatch.setattr(cnn, 'predict_log_odds', recorded)
  predict.predict_images(runs.load_run(cnn_run), images[:3])
  assert calls == [256]  # the run's test slices were scored in calls of 256


def _predict(model_dir, input_path, workdir, **overrides):
  config = predict_config.get_config()
  config.model_dir, config.input = str(model_dir), str(input_path)
  config.num_threads = 2
  config.update_from_flattened_dict(overrides)
  os.makedirs(workdir, exist_ok=True)
  metrics = predict.train_and_evaluate(config, str(workdir))
  return _read_csv(os.path.join(workdir, 'predictions.csv')), metrics


# ----------------------------------------------------------------------------- inputs


def _messy_folder(root):
  """Good images in yes/, no/ and a nested unlabelled folder, plus four bad files."""
  scans = [phantom.phantom_slice(5, i, positive=i % 2 == 0).image for i in range(3)]
  files = {
      'yes/a.png': _png_bytes(scans[0]),
      'no/b.jpg': _jpeg_bytes(scans[1]),
      'extra/deeper/c.png': _png_bytes(scans[2]),
      'yes/truncated.jpg': _jpeg_bytes(scans[0])[:600],
      'no/notes.txt': b'not an image\n',
      'extra/empty.png': b'',
      'blank.png': _png_bytes(np.zeros((64, 80), np.uint8)),
  }
  for rel, data in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
  return files


def test_list_inputs_folder_and_zip_agree(tmp_path):
  files = _messy_folder(tmp_path / 'in')
  listed = inputs.list_inputs(tmp_path / 'in')
  assert [f.path for f in listed] == sorted(files)
  labels = {f.path: f.label for f in listed}
  assert labels['yes/a.png'] == 1 and labels['no/b.jpg'] == 0 and labels['no/notes.txt'] == 0
  assert labels['extra/deeper/c.png'] is None and labels['blank.png'] is None

  archive = tmp_path / 'in.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for rel, data in files.items():
      z.writestr(rel, data)
  zipped = inputs.list_inputs(archive)
  assert [(f.path, f.label) for f in zipped] == [(f.path, f.label) for f in listed]
  with inputs.Reader() as reader:
    np.testing.assert_array_equal(reader.read(zipped[0]), reader.read(listed[0]))
    with pytest.raises(image_io.UnreadableImage):
      reader.read(next(f for f in zipped if f.path == 'no/notes.txt'))

  single = inputs.list_inputs(tmp_path / 'in' / 'yes' / 'a.png')
  assert [(f.path, f.label) for f in single] == [('a.png', None)]
  with pytest.raises(FileNotFoundError, match='does not exist'):
    inputs.list_inputs(tmp_path / 'missing')


def test_zip_members_sharing_a_path_are_read_once_the_last(tmp_path):
  scan, blank = phantom.phantom_slice(5, 0, positive=True).image, np.zeros((40, 40), np.uint8)
  archive = tmp_path / 'in.zip'
  with warnings.catch_warnings(), zipfile.ZipFile(archive, 'w') as z:
    warnings.simplefilter('ignore')  # zipfile warns of the duplicate name we mean to write
    z.writestr('yes/a.png', _png_bytes(scan))
    z.writestr('yes\\a.png', _png_bytes(scan))  # the same output path, written on Windows
    z.writestr('dup.png', _png_bytes(scan))
    z.writestr('dup.png', _png_bytes(blank))  # a name added twice: unzip leaves the last
  listed = inputs.list_inputs(archive)
  assert [(f.path, f.label) for f in listed] == [('dup.png', None), ('yes\\a.png', 1)]
  with inputs.Reader() as reader:
    assert reader.read(listed[0]).max() == 0


def test_zip_members_named_with_dot_dot_are_not_read_and_said_so(tmp_path, monkeypatch):
  archive = tmp_path / 'in.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for name in ('yes/a.png', '../evil.png', 'yes/../../x.png'):
      z.writestr(name, b'x')
  logged = []
  monkeypatch.setattr(logging, 'warning', lambda msg, *args: logged.append(msg % args))
  assert [f.path for f in inputs.list_inputs(archive)] == ['yes/a.png']
  assert logged == [f'{archive}: 2 members named with .. are not read: ../evil.png, '
                    'yes/../../x.png']
  logged.clear()
  assert [name for name, _, _ in layout.iter_zip(str(archive))] == ['yes/a.png']
  assert len(logged) == 1 and '2 members named with ..' in logged[0]


def test_label_and_safe_paths():
  assert layout.label_of('yes/deeper/x.png') == 1
  assert layout.label_of('Br35H/no/x.png') == 0  # class folders one level down
  assert layout.label_of('a/b/no/x.png') is None  # deeper: as the training loader
  assert layout.label_of('yes.png') is None
  assert layout.label_of('top/yes') is None and layout.label_of('no') is None  # files, not folders
  assert layout.is_junk('__MACOSX/yes/a.png') and layout.is_junk('yes/.hidden.png')
  assert not layout.is_junk('yes/a.png')
  assert inputs.safe_relpath('../../etc/./x.png') == 'etc/x.png'
  assert inputs.safe_relpath('/abs/x.png') == 'abs/x.png'


def _rules_applied_directly(cvae_run, errors):
  """Each rule's RuleOutput on (N, S*S) errors, called with cvae_run's RULE_METRICS settings
  written out (not read back through runs.apply_rule), in the order rules='all' lists them."""
  from brainjax.anomaly import dbscan, giaem, kmeans_global, kmeans_image
  centroids = np.load(os.path.join(cvae_run, runs.GLOBAL_CENTROIDS_FILE))
  return {'giaem': giaem.giaem(errors, 0.5, 0.05),
          'dbscan': dbscan.dbscan(errors, 0.7, 0.02, 4, 0.001),
          'kmeans': kmeans_image.kmeans_image(errors, 0.3),
          'global_kmeans': kmeans_global.global_kmeans(errors, 0.5, 1.0, centroids=centroids)}


def test_rules_to_use_follows_the_runs_validation():
  metrics = {'giaem_anomaly_threshold': 0.5, 'giaem_tumor_index': 0.1, 'giaem_val_f1': 0.6,
             'giaem_val_accuracy': 0.9, 'kmeans_tumor_index': 0.2, 'kmeans_val_f1': 0.7,
             'kmeans_val_accuracy': 0.1}
  assert runs.rules_to_use('selected', metrics) == ['kmeans']
  assert runs.rules_to_use('selected', metrics, 'accuracy') == ['giaem']
  assert runs.rules_to_use('all', metrics) == ['kmeans', 'giaem']  # only evaluated rules
  assert runs.rules_to_use('giaem,dbscan', metrics) == ['giaem', 'dbscan']
  with pytest.raises(ValueError, match='expected selected, all'):
    runs.rules_to_use('gaiem', metrics)
  with pytest.raises(ValueError, match='no anomaly-rule hyperparameters'):
    runs.rules_to_use('selected', {})
  # the rule the run itself recorded wins over a recomputation
  assert runs.rules_to_use('selected', dict(metrics, selected_rule='giaem')) == ['giaem']


def test_the_rules_need_the_runs_saved_centroids_and_metrics(cvae_run, tmp_path):
  run = tmp_path / 'run'
  shutil.copytree(cvae_run, run)
  os.remove(run / runs.GLOBAL_CENTROIDS_FILE)
  with pytest.raises(FileNotFoundError, match='global_kmeans rule needs the centroids'):
    predict.predict_paths(str(run), [], rules='global_kmeans')
  assert predict.predict_paths(str(run), [], rules='giaem') == []  # other rules still work
  # Damaged: a one-line error naming the file (an EOFError traceback, or numpy's advice on
  # pickled data naming no file, before).
  for damaged in (b'', b'garbage\n', _npy_bytes(np.zeros((3, 5))), _npy_bytes(np.array(['a']))):
    (run / runs.GLOBAL_CENTROIDS_FILE).write_bytes(damaged)
    with pytest.raises(ValueError, match=f'{runs.GLOBAL_CENTROIDS_FILE} is not the '
                       r'\(2, 16384\) centroids its run saved: run that run\'s command again'):
      predict.predict_paths(str(run), [], rules='global_kmeans')
  for damaged in ('{"a":', '[]'):
    (run / 'metrics.json').write_text(damaged)
    with pytest.raises(ValueError, match='metrics.json (cannot be read|is not a run.s metrics) '
                       '.*: run that run.s command'):
      predict.predict_paths(str(run), [], rules='giaem')
  os.remove(run / 'metrics.json')  # as a stopped rerun leaves it: its rules are being refitted
  with pytest.raises(ValueError, match='no metrics.json: the run has not finished'):
    predict.predict_paths(str(run), [], rules='giaem')


def test_each_rule_scores_with_the_settings_the_run_selected(cvae_run):
  # (The other tests see that every rule gives a score, not which one: a rule applied with its
  # settings swapped, or global KMeans refitted on the inputs, passed them.)
  run = runs.load_run(cvae_run)
  images = np.stack([preprocess.preprocess(phantom.phantom_slice(5, i, positive=i < 2).image)[0]
                     for i in range(4)])[..., None]
  got = predict.predict_images(run, images, rules=runs.RULES)
  errors = runs.reconstruction_errors(run, images)
  np.testing.assert_array_equal(got.errors, errors)
  want = _rules_applied_directly(cvae_run, errors)
  for rule, out in want.items():
    np.testing.assert_array_equal(got.rule_scores[rule], out.score, err_msg=rule)
    np.testing.assert_array_equal(got.rule_labels[rule], out.prediction, err_msg=rule)
  np.testing.assert_array_equal(got.region, want['giaem'].region)  # the leading rule's
  # ... where it calls a tumour; none where it calls the slice healthy (a cut-off that
  # calls half of them so)
  median = float(np.median(want['giaem'].score))
  run = dataclasses.replace(run, metrics={**run.metrics, 'giaem_tumor_index': median})
  got = predict.predict_images(run, images, rules=('giaem',))
  called = got.label == 1
  assert called.sum() == 2 and want['giaem'].region[~called].any()
  np.testing.assert_array_equal(got.region[called], want['giaem'].region[called])
  assert not got.region[~called].any()


# ----------------------------------------------------------------------------- geometry


def _ellipse(shape, cy, cx, ry, rx):
  y, x = np.ogrid[:shape[0], :shape[1]]
  return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


@pytest.mark.parametrize('index, canvas, offset', [
    (0, (420, 260), (150, 20)),   # tall canvas, head low and left
    (1, (240, 560), (0, 300)),    # wide canvas, head at the top right
    (2, (720, 330), (380, 40)),   # large, head in the lower part
])
def test_region_survives_preprocessing_and_back(index, canvas, offset):
  scan = image_io.to_gray_float(phantom.phantom_slice(3, index, positive=False).image)
  h, w = scan.shape
  background = float(np.median(np.concatenate([scan[0], scan[-1]])))
  full = np.full((max(canvas[0], h + offset[0]), max(canvas[1], w + offset[1])), background,
                 np.float32)
  full[offset[0]:offset[0] + h, offset[1]:offset[1] + w] = scan
  assert full.shape[0] != full.shape[1]
  region = _ellipse(full.shape, offset[0] + 0.45 * h, offset[1] + 0.6 * w, 0.12 * h, 0.18 * w)

  _, info = preprocess.preprocess(full, size=128, margin=0.05)
  small = preprocess.apply_crop(region.astype(np.uint8), info, size=128)
  back = anomaly_maps.region_to_original(small, info)
  assert back.shape == full.shape
  assert _dice(back, region) > 0.9


# ----------------------------------------------------------------------------- the command


def test_messy_folder_every_file_gets_a_row(cvae_run, tmp_path):
  files = _messy_folder(tmp_path / 'in')
  before = _tree_digest(tmp_path / 'in')
  rows, metrics = _predict(cvae_run, tmp_path / 'in', tmp_path / 'out', rules='all')
  assert _tree_digest(tmp_path / 'in') == before  # the input is never modified
  assert sorted(rows) == sorted(files)
  ok = {'yes/a.png', 'no/b.jpg', 'extra/deeper/c.png'}
  for rel, row in rows.items():
    assert (row['status'] == 'ok') == (rel in ok), (rel, row['status'])
  assert 'truncated' in rows['yes/truncated.jpg']['status']
  assert 'not a recognised image' in rows['no/notes.txt']['status']
  assert 'empty file' in rows['extra/empty.png']['status']
  assert 'blank' in rows['blank.png']['status']
  assert rows['yes/a.png']['true_label'] == '1' and rows['extra/deeper/c.png']['true_label'] == ''
  assert metrics['num_inputs'] == 7 and metrics['num_skipped'] == 4
  assert metrics['num_labelled'] == 2  # yes/a.png and no/b.jpg

  # Each rule's columns and metrics are its own (filled from the leading rule's, they passed
  # a check that they were not empty): the rules applied directly to errors of the same
  # slices, in predict's order and batch shape (so the same errors).
  run = runs.load_run(cvae_run)
  order = sorted(ok)
  images = np.stack([preprocess.preprocess(image_io.decode_image(files[rel]), size=run.image_size,
                                           margin=run.margin)[0] for rel in order])[..., None]
  want = _rules_applied_directly(cvae_run, runs.reconstruction_errors(run, images))
  assert metrics['rule'] == 'giaem'  # the best giaem_val_f1 of RULE_METRICS
  for j, rel in enumerate(order):
    for rule, out in want.items():
      assert float(rows[rel][f'score_{rule}']) == pytest.approx(out.score[j], abs=1e-6), (rel, rule)
      assert int(rows[rel][f'predicted_{rule}']) == out.prediction[j], (rel, rule)
    assert float(rows[rel]['score']) == pytest.approx(want['giaem'].score[j], abs=1e-6)
    assert int(rows[rel]['predicted_label']) == want['giaem'].prediction[j]
  labelled = [order.index(rel) for rel in ('no/b.jpg', 'yes/a.png')]  # true labels 0, 1
  # (On these labelled phantoms a rule disagrees with the leading one: else a copy of its
  # labels and metrics would pass.)
  assert any((out.prediction[labelled] != want['giaem'].prediction[labelled]).any()
             for out in want.values())
  on_disk = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  for rule, out in want.items():
    expected = predict.labelled_metrics(np.array([0, 1]), out.prediction[labelled],
                                        out.score[labelled])
    prefix = '' if rule == 'giaem' else f'{rule}_'  # the leading rule's are unprefixed
    for key, value in expected.items():
      got = on_disk[prefix + key]
      assert (np.nan if got is None else got) == pytest.approx(value, abs=1e-6, nan_ok=True), (
          rule, key)
  # The notebook API gives every rule's too.
  records = predict.predict_paths(cvae_run, str(tmp_path / 'in'), rules='all', maps=False)
  by_rel = {os.path.relpath(r['path'], tmp_path / 'in'): r for r in records}
  for j, rel in enumerate(order):
    assert by_rel[rel]['scores'] == pytest.approx(
        {rule: out.score[j] for rule, out in want.items()}, abs=1e-6), rel
    assert by_rel[rel]['predicted_labels'] == {
        rule: int(out.prediction[j]) for rule, out in want.items()}, rel

  heads = {}
  for rel in ok:
    scan = image_io.decode_image(files[rel])
    map_ = np.load(tmp_path / 'out' / 'maps' / f'{rel}.npy')
    assert map_.dtype == np.float32 and map_.shape == scan.shape
    assert map_.min() >= 0 and map_.max() <= 1 and map_.max() > 0
    # The rules see the whole slice, background too; outside the head (in the file's grid),
    # where no tumour is, the map is 0 and the region empty. (Outside the head's box alone
    # they were 0 without the head cuts too: the crop's own zero fill.)
    image, info = preprocess.preprocess(scan)
    heads[rel] = anomaly_maps.region_to_original(anomaly_maps.head_mask(image), info)
    assert not map_[~heads[rel]].any()
    region = np.asarray(Image.open(tmp_path / 'out' / 'regions' / f'{rel}.png'))
    assert region.shape == scan.shape and set(np.unique(region)) <= {0, 255}
    assert not region[~heads[rel]].any()
    shown = np.asarray(Image.open(tmp_path / 'out' / 'overlays' / f'{rel}.png'))
    assert shown.shape == scan.shape + (3,)
  assert not (tmp_path / 'out' / 'maps' / 'no' / 'notes.txt.npy').exists()

  (record,) = predict.predict_paths(cvae_run, [str(tmp_path / 'in' / 'yes' / 'a.png')])
  np.testing.assert_allclose(record['map'], np.load(tmp_path / 'out' / 'maps' / 'yes/a.png.npy'),
                             atol=1e-5)  # batch of 1 here, of 3 above
  assert record['region'].shape == record['map'].shape and record['rule'] == 'giaem'
  assert not record['region'][~heads['yes/a.png']].any()
  assert set(record['scores']) == {'giaem'}


def test_labelled_folder_metrics_match_sklearn(cnn_run, tmp_path):
  predict.write_phantom_folder(str(tmp_path / 'in'), num_per_class=8, seed=11)
  rows, metrics = _predict(cnn_run, tmp_path / 'in', tmp_path / 'out')
  on_disk = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  assert all(r['status'] == 'ok' for r in rows.values()) and len(rows) == 16
  y = np.array([int(r['true_label']) for r in rows.values()])
  p = np.array([int(r['predicted_label']) for r in rows.values()])
  s = np.array([float(r['score']) for r in rows.values()])
  np.testing.assert_array_equal(p, (s >= 0.5).astype(int))
  expected = {
      'accuracy': sk_metrics.accuracy_score(y, p),
      'balanced_accuracy': sk_metrics.balanced_accuracy_score(y, p),
      'sensitivity': sk_metrics.recall_score(y, p, zero_division=0),
      'specificity': sk_metrics.recall_score(y, p, pos_label=0, zero_division=0),
      'precision': sk_metrics.precision_score(y, p, zero_division=0),
      'f1': sk_metrics.f1_score(y, p, zero_division=0),
      'auroc': sk_metrics.roc_auc_score(y, s),
  }
  (tn, fp), (fn, tp) = sk_metrics.confusion_matrix(y, p, labels=[0, 1])
  expected.update(tn=tn, fp=fp, fn=fn, tp=tp)
  for key, value in expected.items():
    assert on_disk[key] == pytest.approx(value, abs=1e-6), key
    assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_labelled_auc_ranks_log_odds_not_rounded_probabilities(cnn_run, tmp_path, monkeypatch):
  """Log-odds above ~37 all round to probability 1.0 in float64; ROC AUC still ranks them."""
  seen = []

  def confident_logits(model, variables, images):  # log-odds 40 + 1000 x mean intensity
    del model, variables
    seen.append(np.asarray(images))
    return jax.numpy.stack([jax.numpy.zeros(len(images)),
                            40 + 1000 * images.mean(axis=(1, 2, 3))], axis=1)

  monkeypatch.setattr(cnn_cls, 'predict_logits', confident_logits)
  predict.write_phantom_folder(str(tmp_path / 'in'), num_per_class=8, seed=11)
  rows, metrics = _predict(cnn_run, tmp_path / 'in', tmp_path / 'out')
  scores = np.array([float(r['score']) for r in rows.values()])
  assert (scores == 1.0).all()  # every probability ties ...
  y = np.array([int(r['true_label']) for r in rows.values()])
  log_odds = 40 + 1000 * np.concatenate(seen).astype(np.float64).mean(axis=(1, 2, 3))[:len(y)]
  assert metrics['auroc'] == pytest.approx(sk_metrics.roc_auc_score(y, log_odds), abs=1e-6)
  assert metrics['auroc'] != 0.5  # ... so ranking them would give chance


def test_a_ratio_with_an_empty_denominator_is_undefined():
  scores = np.array([0.9, 0.2, 0.7])
  tumour_only = predict.labelled_metrics(np.array([1, 1, 1]), np.array([1, 0, 1]), scores)
  assert np.isnan(tumour_only['specificity'])
  assert tumour_only['sensitivity'] == tumour_only['recall'] == pytest.approx(2 / 3)
  healthy_only = predict.labelled_metrics(np.array([0, 0, 0]), np.array([1, 0, 1]), scores)
  assert np.isnan(healthy_only['sensitivity']) and np.isnan(healthy_only['recall'])
  assert healthy_only['specificity'] == pytest.approx(1 / 3)
  assert healthy_only['precision'] == healthy_only['f1'] == 0  # two healthy called tumour
  all_right = predict.labelled_metrics(np.array([0, 0, 0]), np.array([0, 0, 0]), scores)
  assert all_right['accuracy'] == all_right['specificity'] == 1
  assert np.isnan(all_right['precision']) and np.isnan(all_right['f1'])
  none_called = predict.labelled_metrics(np.array([1, 0]), np.array([0, 0]), scores[:2])
  assert np.isnan(none_called['precision']) and none_called['f1'] == none_called['recall'] == 0
  # A macro average over a class's undefined ratio is undefined too (scikit-learn's averages
  # run over the classes predicted as well as labelled: the tumour recall 0/0 counted as 0).
  assert np.isnan(healthy_only['macro_recall'])  # (the tumour class is predicted, not labelled)
  assert healthy_only['macro_precision'] == pytest.approx(0.5)  # (0/2 and 1/1)
  assert np.isnan(none_called['macro_precision'])  # (tumour labelled, never predicted)
  assert none_called['macro_recall'] == pytest.approx(0.5)
  assert np.isnan(predict.labelled_metrics(np.array([1, 1]), np.array([1, 0]),
                                           scores[:2])['macro_recall'])
  assert np.isnan(predict.labelled_metrics(np.array([0, 0]), np.array([1, 1]),
                                           scores[:2])['macro_precision'])
  assert all_right['macro_recall'] == all_right['macro_precision'] == 1  # (one class, right)
  both = predict.labelled_metrics(np.array([1, 0, 1]), np.array([1, 0, 0]), scores)
  assert both['macro_recall'] == pytest.approx((1 / 2 + 1) / 2)
  assert both['macro_precision'] == pytest.approx((1 + 1 / 2) / 2)


def test_predict_paths_takes_paths_and_arrays(cnn_run, tmp_path):
  scan = phantom.phantom_slice(7, 0, positive=True).image
  path = tmp_path / 'one.png'
  path.write_bytes(_png_bytes(scan))
  records = predict.predict_paths(cnn_run, [str(path), scan, np.zeros((40, 40)),
                                            str(tmp_path / 'gone.png')])
  assert [r['path'] for r in records] == [str(path), 'array_1', 'array_2',
                                          str(tmp_path / 'gone.png')]
  assert [r['status'] for r in records][:2] == ['ok', 'ok']
  assert records[2]['status'].startswith('skipped: blank')
  assert records[3]['status'].startswith('skipped: no such file')
  assert records[0]['score'] == pytest.approx(records[1]['score'], abs=1e-5)
  assert records[0]['predicted_label'] == int(records[0]['score'] >= 0.5)
  # One array is one image (its rows were taken as images), a stack is several.
  (one,) = predict.predict_paths(cnn_run, scan)
  assert one['status'] == 'ok' and one['score'] == pytest.approx(records[1]['score'], abs=1e-5)
  stack = predict.predict_paths(cnn_run, np.stack([scan, scan]))
  assert [r['path'] for r in stack] == ['array_0', 'array_1']
  # A JAX array is an array too (its rows were taken as images), and so is a PIL image.
  for image in (jnp.asarray(scan), Image.fromarray(np.round(scan * 255).astype(np.uint8))):
    (record,) = predict.predict_paths(cnn_run, image)
    assert record['status'] == 'ok'
    assert record['score'] == pytest.approx(records[1]['score'], abs=2e-2)
  assert len(predict.predict_paths(cnn_run, jnp.stack([scan] * 3))) == 3


def test_predict_paths_reads_a_zip_and_a_folder(cnn_run, tmp_path):
  scans = {'yes/a.png': phantom.phantom_slice(7, 0, positive=True).image,
           'no/b.png': phantom.phantom_slice(7, 1, positive=False).image}
  with zipfile.ZipFile(tmp_path / 'in.zip', 'w') as archive:
    for name, scan in scans.items():
      archive.writestr(name, _png_bytes(scan))
      (tmp_path / 'in' / name).parent.mkdir(parents=True, exist_ok=True)
      (tmp_path / 'in' / name).write_bytes(_png_bytes(scan))
  zipped, folder = (predict.predict_paths(cnn_run, str(tmp_path / x)) for x in ('in.zip', 'in'))
  assert sorted(r['path'] for r in zipped) == [f'{tmp_path}/in.zip/{n}' for n in sorted(scans)]
  assert sorted(r['path'] for r in folder) == [f'{tmp_path}/in/{n}' for n in sorted(scans)]
  for records in (zipped, folder):
    assert [r['status'] for r in records] == ['ok', 'ok']
    assert sorted(r['true_label'] for r in records) == [0, 1]
  by_name = lambda records: {r['path'].rsplit('/', 2)[-2]: r['score'] for r in records}
  assert by_name(zipped) == pytest.approx(by_name(folder), abs=1e-6)
  # A folder named with a trailing slash: the same names (not in//yes/a.png).
  slashed = predict.predict_paths(cnn_run, f'{tmp_path}/in/')
  assert [r['path'] for r in slashed] == [r['path'] for r in folder]
  with pytest.raises(ValueError, match="rules='all': a BrainCNN run has no anomaly rules"):
    predict.predict_paths(cnn_run, [], rules='all')  # (as the command refuses it)


def test_dedup_against_skips_and_counts_near_duplicates(cnn_run, tmp_path):
  scans = [phantom.phantom_slice(9, i, positive=False).image for i in range(3)]
  for i, scan in enumerate(scans):
    (tmp_path / 'in').mkdir(exist_ok=True)
    (tmp_path / 'in' / f's{i}.png').write_bytes(_png_bytes(scan))
  (tmp_path / 'train').mkdir()
  (tmp_path / 'train' / 'copy.jpg').write_bytes(_jpeg_bytes(scans[1]))  # a re-encoded copy
  rows, metrics = _predict(cnn_run, tmp_path / 'in', tmp_path / 'out',
                           dedup_against=str(tmp_path / 'train'))
  assert [rows[f's{i}.png']['status'] for i in (0, 2)] == ['ok', 'ok']
  assert rows['s1.png']['status'].startswith('skipped: near-duplicate')
  assert metrics['num_near_duplicates'] == 1 and metrics['num_predicted'] == 2


def test_dedup_against_does_not_read_a_predict_workdir_inside_it(cnn_run, tmp_path):
  # (its overlays and regions were read as training images: 54 reference images for 18 scans)
  scans = [phantom.phantom_slice(9, i, positive=False).image for i in range(2)]
  (tmp_path / 'train').mkdir()
  (tmp_path / 'train' / 's0.png').write_bytes(_png_bytes(scans[0]))
  run_outputs = tmp_path / 'train' / 'earlier_predict'
  (run_outputs / 'overlays').mkdir(parents=True)
  (run_outputs / 'config.json').write_text('{"task": "predict"}')
  (run_outputs / 'overlays' / 's1.png').write_bytes(_png_bytes(scans[1]))
  (tmp_path / 'in').mkdir()
  for i, scan in enumerate(scans):
    (tmp_path / 'in' / f's{i}.png').write_bytes(_png_bytes(scan))
  rows, metrics = _predict(cnn_run, tmp_path / 'in', tmp_path / 'out',
                           dedup_against=str(tmp_path / 'train'))
  assert rows['s0.png']['status'].startswith('skipped: near-duplicate')
  assert rows['s1.png']['status'] == 'ok' and metrics['num_near_duplicates'] == 1


def test_a_link_into_the_other_class_folder_is_not_an_input(tmp_path, monkeypatch):
  # (yes/b.png -> ../no/b.png was a healthy scan labelled tumour, counted in the metrics)
  for name in ('in/yes/a.png', 'in/no/b.png', 'outside/no/c.png'):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(_png_bytes(phantom.phantom_slice(4, 0, False).image))
  (tmp_path / 'in' / 'yes' / 'b.png').symlink_to(tmp_path / 'in' / 'no' / 'b.png')
  # A link out of the input keeps the label of where it lies.
  (tmp_path / 'in' / 'yes' / 'c.png').symlink_to(tmp_path / 'outside' / 'no' / 'c.png')
  warnings = []
  monkeypatch.setattr(inputs.logging, 'warning', lambda msg, *a: warnings.append(msg % a))
  assert [(f.path, f.label) for f in inputs.list_inputs(str(tmp_path / 'in'))] == [
      ('no/b.png', 0), ('yes/a.png', 1), ('yes/c.png', 1)]
  (message,) = warnings
  assert message.endswith('1 files are links into the other class folder, not read: yes/b.png')


def test_dedup_against_finds_a_blurred_copy_as_the_grouped_split_does(cnn_run, tmp_path):
  # A blurred copy (Br35H holds such pairs, e.g. no/no294.jpg and no/no733.jpg) correlates
  # 0.999 with its original in raw-file thumbnails but 0.77 once each is cropped and
  # rescaled: the grouped split links it (either view), so dedup_against must skip it too.
  from scipy import ndimage
  scan = phantom.phantom_slice(9, 0, positive=False).image
  blurred = ndimage.gaussian_filter(image_io.to_gray_float(scan), 2)
  (tmp_path / 'in').mkdir()
  (tmp_path / 'in' / 's.png').write_bytes(_png_bytes(scan))
  (tmp_path / 'train').mkdir()
  (tmp_path / 'train' / 'copy.png').write_bytes(
      _png_bytes(np.round(blurred * 255).astype(np.uint8)))
  rows, metrics = _predict(cnn_run, tmp_path / 'in', tmp_path / 'out',
                           dedup_against=str(tmp_path / 'train'))
  assert rows['s.png']['status'].startswith('skipped: near-duplicate')
  assert metrics['num_near_duplicates'] == 1


def test_a_pil_image_is_read_as_its_file_is(cnn_run, tmp_path):
  # (np.asarray of a palette image gave its indices, of a CMYK one RGBA: a wrong score, a slice
  # skipped as blank)
  rgb = np.stack([np.round(phantom.phantom_slice(7, 0, positive=True).image * 255)] * 3, -1)
  palette = Image.fromarray(rgb.astype(np.uint8)).quantize(64)
  palette.info['transparency'] = 0
  images = {'palette.png': palette, 'cmyk.jpg': Image.fromarray(rgb.astype(np.uint8)).convert(
      'CMYK'), 'turned.jpg': Image.fromarray(rgb[:, 20:].astype(np.uint8))}
  exif = images['turned.jpg'].getexif()
  exif[0x0112] = 6  # (displayed turned a quarter)
  for name, image in images.items():
    image.save(tmp_path / name, **({'exif': exif} if name == 'turned.jpg' else {}))
  for name in images:
    with Image.open(tmp_path / name) as image:
      by_image = predict.predict_paths(cnn_run, image)
    by_path = predict.predict_paths(cnn_run, str(tmp_path / name))
    assert by_image[0]['status'] == by_path[0]['status'] == 'ok', name
    assert by_image[0]['score'] == by_path[0]['score'], name


def test_workdir_inside_the_input_is_not_read_back(cnn_run, tmp_path):
  (tmp_path / 'no').mkdir()
  (tmp_path / 'no' / 'a.png').write_bytes(_png_bytes(phantom.phantom_slice(4, 0, False).image))
  first, _ = _predict(cnn_run, tmp_path, tmp_path / 'out')
  second, _ = _predict(cnn_run, tmp_path, tmp_path / 'out')  # out/ now holds a csv and json
  (tmp_path.parent / f'{tmp_path.name}_link').symlink_to(tmp_path)
  linked, _ = _predict(cnn_run, tmp_path.parent / f'{tmp_path.name}_link', tmp_path / 'out')
  assert list(first) == list(second) == list(linked) == ['no/a.png']
  # Nor an earlier run's (launch.py writes its config.json), from a run into another folder.
  (tmp_path / 'out' / 'config.json').write_text(predict_config.get_config().to_json())
  other, _ = _predict(cnn_run, tmp_path, tmp_path / 'out_b')
  assert list(other) == ['no/a.png']
  # predict_paths reads what the command reads (it scored the outputs' overlays as scans).
  (tmp_path / 'out_b' / 'config.json').write_text(predict_config.get_config().to_json())
  assert [r['path'] for r in predict.predict_paths(cnn_run, str(tmp_path))] == [
      os.path.join(str(tmp_path), 'no/a.png')]


def test_a_prediction_replacing_an_earlier_one_says_so(cnn_run, tmp_path, monkeypatch):
  (tmp_path / 'in' / 'no').mkdir(parents=True)
  scan = phantom.phantom_slice(4, 0, False).image
  (tmp_path / 'in' / 'no' / 'a.png').write_bytes(_png_bytes(scan))
  warned = []
  monkeypatch.setattr(logging, 'warning', lambda msg, *args: warned.append(msg % args))
  _predict(cnn_run, tmp_path / 'in', tmp_path / 'out')
  assert not [w for w in warned if 'replacing' in w]
  _predict(cnn_run, tmp_path / 'in', tmp_path / 'out')
  assert [w for w in warned if w == f'{tmp_path / "out"}: replacing the outputs of an earlier '
          'prediction there (predictions.csv).']


def test_an_input_inside_the_workdir_is_read(cnn_run, tmp_path):
  # Smoke mode writes its input into <workdir>/smoke_input; the workdir holds it, not its outputs.
  (tmp_path / 'smoke_input' / 'no').mkdir(parents=True)
  scan = phantom.phantom_slice(4, 0, False).image
  (tmp_path / 'smoke_input' / 'no' / 'a.png').write_bytes(_png_bytes(scan))
  rows, _ = _predict(cnn_run, tmp_path / 'smoke_input', tmp_path)
  assert list(rows) == ['no/a.png'] and rows['no/a.png']['status'] == 'ok'


def test_a_broken_link_in_the_input_is_a_skipped_row(cnn_run, tmp_path):
  (tmp_path / 'in' / 'no').mkdir(parents=True)
  scan = phantom.phantom_slice(4, 0, False).image
  (tmp_path / 'in' / 'no' / 'a.png').write_bytes(_png_bytes(scan))
  (tmp_path / 'in' / 'no' / 'gone.png').symlink_to(tmp_path / 'missing.png')
  rows, metrics = _predict(cnn_run, tmp_path / 'in', tmp_path / 'out')
  assert list(rows) == ['no/a.png', 'no/gone.png']
  assert rows['no/gone.png']['status'].startswith('skipped: cannot read file')
  assert metrics['num_inputs'] == 2


def test_bad_predict_settings_are_named(cnn_run, tmp_path):
  (tmp_path / 'in').mkdir()
  with pytest.raises(ValueError, match='batch_size=0'):
    _predict(cnn_run, tmp_path / 'in', tmp_path / 'out', batch_size=0)
  with pytest.raises(FileNotFoundError, match="dedup_against='/nonexistent'"):
    _predict(cnn_run, tmp_path / 'in', tmp_path / 'out', dedup_against='/nonexistent')
  with pytest.raises(ValueError, match="rules='all': a BrainCNN run has no anomaly rules"):
    _predict(cnn_run, tmp_path / 'in', tmp_path / 'out', rules='all')
  with pytest.raises(FileNotFoundError, match="input '.*nowhere' does not exist"):
    _predict(cnn_run, tmp_path / 'nowhere', tmp_path / 'out')
  os.mkfifo(tmp_path / 'pipe.png')  # (reading it would wait for a writer)
  with pytest.raises(ValueError, match="pipe.png' is not a file, a folder or a zip"):
    _predict(cnn_run, tmp_path / 'pipe.png', tmp_path / 'out')
  config = predict_config.get_config('smoke')
  config.smoke_task = 'vae_gen'
  with pytest.raises(ValueError, match="smoke_task='vae_gen'"):
    predict.check_config(config)
  config.smoke_task, config.rules = 'cvae_cls', 'giaem,dbscn'
  with pytest.raises(ValueError, match="rules='giaem,dbscn': expected"):
    predict.check_config(config)
  assert not os.listdir(tmp_path / 'out')  # (refused before anything is written)
  rows, metrics = _predict(cnn_run, tmp_path / 'in', tmp_path / 'out')  # empty: a warning
  assert rows == {} and metrics['num_inputs'] == 0


def test_odd_names_get_rows_and_a_rerun_replaces_the_maps(cvae_run, tmp_path):
  scan = _png_bytes(phantom.phantom_slice(5, 0, positive=True).image)
  (tmp_path / 'first' / 'yes').mkdir(parents=True)
  (tmp_path / 'first' / 'yes' / 'a.png').write_bytes(scan)
  _predict(cvae_run, tmp_path / 'first', tmp_path / 'out')
  assert (tmp_path / 'out' / 'maps' / 'yes' / 'a.png.npy').exists()

  (tmp_path / 'second').mkdir()
  latin1 = os.fsdecode(b'scan_\xe9.png')  # a name that is not UTF-8, from an old disk
  too_long = 'x' * 250 + '.png'  # fine as an input, too long as maps/<name>.npy
  for name in (latin1, too_long):
    (tmp_path / 'second' / name).write_bytes(scan)
  os.mkfifo(tmp_path / 'second' / 'pipe.png')  # (reading it would wait for a writer)
  # A refused rerun (launch.py refuses it before it rewrites config.json) leaves every output.
  before = sorted(p.relative_to(tmp_path) for p in (tmp_path / 'out').rglob('*'))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    _predict(tmp_path / 'no_such_run', tmp_path / 'second', tmp_path / 'out')
  assert sorted(p.relative_to(tmp_path) for p in (tmp_path / 'out').rglob('*')) == before
  # One that fails later leaves none of the earlier outputs beside its config.json (launch.py
  # has rewritten it): nothing there describes another run than it says.
  shutil.copytree(cvae_run, tmp_path / 'damaged_run')
  shutil.rmtree(tmp_path / 'damaged_run' / 'best')
  with pytest.raises((FileNotFoundError, ValueError), match='best'):
    _predict(tmp_path / 'damaged_run', tmp_path / 'second', tmp_path / 'out')
  assert sorted(os.listdir(tmp_path / 'out')) == []
  _predict(cvae_run, tmp_path / 'first', tmp_path / 'out')
  rows, metrics = _predict(cvae_run, tmp_path / 'second', tmp_path / 'out')
  assert rows['scan_\\udce9.png']['status'] == 'ok'  # the CSV escapes the undecodable byte
  assert rows[too_long]['status'] == 'ok; maps not written: File name too long'
  assert rows['pipe.png']['status'] == 'skipped: cannot read file: not a regular file but a pipe'
  assert metrics['num_without_maps'] == 1 and metrics['num_predicted'] == 2
  assert metrics['num_unreadable'] == 1 and metrics['num_inputs'] == 3
  assert os.listdir(tmp_path / 'out' / 'maps') == [latin1 + '.npy']  # the first run's are gone
  with pytest.raises(ValueError, match='output folder'):
    _predict(cvae_run, tmp_path / 'out' / 'maps', tmp_path / 'out')


def test_a_backslash_in_a_folder_s_file_name_is_a_character(cvae_run, tmp_path):
  # Left by unzipping a Windows-made zip on Linux: 'yes\\a.png' at the root is no file of
  # yes/, and its maps are not yes/a.png's.
  healthy, tumour = (_png_bytes(phantom.phantom_slice(5, 0, positive=p).image)
                     for p in (False, True))
  (tmp_path / 'in' / 'yes').mkdir(parents=True)
  (tmp_path / 'in' / 'yes' / 'a.png').write_bytes(tumour)
  (tmp_path / 'in' / 'yes\\a.png').write_bytes(healthy)
  rows, _ = _predict(cvae_run, tmp_path / 'in', tmp_path / 'out')
  assert (rows['yes/a.png']['true_label'], rows['yes\\a.png']['true_label']) == ('1', '')
  ours = np.load(tmp_path / 'out' / 'maps' / 'yes' / 'a.png.npy')
  theirs = np.load(tmp_path / 'out' / 'maps' / 'yes\\a.png.npy')
  assert not np.array_equal(ours, theirs)


@pytest.fixture(scope='module')
def trained_cvae_run(tmp_path_factory):
  """A BrainCVAE trained long enough to judge its maps (the smoke one, 24 slices per class and
  2 epochs, is not): lr 1e-4 (at the study's 1e-3 the decoder collapsed and the regions fell
  below chance)."""
  return _train(cvae_cls, cvae_config, tmp_path_factory.mktemp('trained') / 'run',
                str(tmp_path_factory.getbasetemp() / 'cache'), variant='real', **TRAINED_CVAE)


@pytest.mark.slow
def test_regions_find_phantom_tumours_better_than_chance(tmp_path, trained_cvae_run):
  """regions/ lines up with the scans: single-image KMeans' tumour regions overlap the true
  phantom masks more than random regions of the same area in the head.

  That rule, because its regions beat chance clearly in this run (Dice 0.276 against 0.196
  on the phantom's version 2; 0.171 against 0.116 on version 1).
  The rule selected on validation does not reliably: which rule wins there, and with which
  hyperparameters, turns on float rounding in this short run (before d8e0dbd global KMeans,
  0.098 against 0.093; since, DBSCAN, 0.013 against 0.014).
  """
  run = trained_cvae_run
  folder, masks = tmp_path / 'in' / 'yes', {}
  folder.mkdir(parents=True)
  for i in range(12):
    s = phantom.phantom_slice(21, i, positive=True)
    Image.fromarray(s.image).save(folder / f't{i}.png')
    masks[f'yes/t{i}.png'] = s.mask.astype(bool)
  rows, metrics = _predict(run, tmp_path / 'in', tmp_path / 'out', rules='kmeans')
  rng = np.random.default_rng(0)
  dice, chance = [], []
  for rel, mask in masks.items():
    assert rows[rel]['status'] == 'ok'
    region = np.asarray(Image.open(tmp_path / 'out' / 'regions' / f'{rel}.png')) > 0
    map_ = np.load(tmp_path / 'out' / 'maps' / f'{rel}.npy')
    dice.append(_dice(region, mask))
    # Chance: as many pixels as the region, drawn at random inside the head.
    head = np.flatnonzero(map_ > 0)
    random_region = np.zeros(mask.size, bool)
    random_region[rng.choice(head, min(int(region.sum()), head.size), replace=False)] = True
    chance.append(_dice(random_region.reshape(mask.shape), mask))
  print(f'\nregions/ ({metrics["rule"]}) vs true tumour masks of {len(masks)} phantom slices: '
        f'mean Dice {np.mean(dice):.3f}; a random region of the same area in the head: '
        f'{np.mean(chance):.3f}')
  assert np.mean(dice) > np.mean(chance)


@pytest.mark.slow
@pytest.mark.parametrize('threshold, eps, min_samples', [(0.5, 0.015, 4), (0.6, 0.025, 8)])
def test_dbscan_labels_match_sklearn_on_a_trained_model_s_maps(trained_cvae_run, threshold, eps,
                                                                 min_samples):
  """The DBSCAN rule's clusters are scikit-learn's on the maps a trained BrainCVAE makes (at
  points of the default grid), not only on the hand-made maps of test_anomaly_dbscan."""
  run = runs.load_run(trained_cvae_run)
  images = np.stack([preprocess.preprocess(image_io.to_gray_float(
      phantom.phantom_slice(22, i, positive=bool(i % 2)).image), 128, 0.05)[0]
                     for i in range(8)])[..., None]
  errors = runs.reconstruction_errors(run, images)
  labels = dbscan.dbscan_labels(errors, threshold, eps, min_samples)
  clustered = 0
  for row, ours in zip(errors, labels):
    points = np.flatnonzero(row >= np.float32(threshold))
    expected = (DBSCAN(eps=eps, min_samples=min_samples)
                .fit(pixel_features.pixel_features(row, 128, 128)[points]).labels_
                if points.size else points)
    np.testing.assert_array_equal(ours[points], expected)
    clustered += int((expected >= 0).sum())
  assert clustered > 0  # (maps with clusters: a comparison of empty labels would prove nothing)


@pytest.mark.slow
def test_smoke_config_runs_end_to_end(tmp_path):
  """`launch.py --config=configs/predict.py:smoke`: trains a tiny run, predicts phantoms."""
  result = subprocess.run(
      [sys.executable, 'launch.py', '--config=configs/predict.py:smoke',
       f'--workdir={tmp_path}', f'--config.cache_dir={tmp_path / "cache"}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = _read_csv(tmp_path / 'predictions.csv')
  assert len(rows) == 12 and all(r['status'] == 'ok' for r in rows.values())
  assert 'accuracy' in json.loads((tmp_path / 'metrics.json').read_text())
  # Rerun with fewer slices and the other task: its own model, and only the new slices.
  result = subprocess.run(
      [sys.executable, 'launch.py', '--config=configs/predict.py:smoke',
       f'--workdir={tmp_path}', f'--config.cache_dir={tmp_path / "cache"}',
       '--config.data.num_per_class=3', '--config.smoke_task=cvae_cls'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert len(_read_csv(tmp_path / 'predictions.csv')) == 6
  assert json.loads((tmp_path / 'metrics.json').read_text())['model_task'] == 'cvae_cls'


@pytest.mark.parametrize('text, message', [
    ('[]', 'is not a brainjax run config'),
    ('{"task": "cnn_cls"', 'is not a brainjax run config'),
    ('{"task": "cnn_cls"}', 'lacks a setting its model needs'),
    ('{"task": "vae_gen"}', "is a 'vae_gen' run; predict needs"),
])
def test_a_model_dir_whose_config_is_no_classifier_s_is_a_one_line_error(text, message, tmp_path):
  (tmp_path / 'config.json').write_text(text)
  with pytest.raises(ValueError, match=message):
    runs.load_run(str(tmp_path))
  assert os.listdir(tmp_path) == ['config.json']


def test_a_refused_smoke_run_leaves_its_workdir_as_it_was(tmp_path):
  # Its settings are checked before smoke mode draws its inputs and trains its model: these
  # were replaced, and then the refusal left the old config.json and metrics.json over them.
  config = predict_config.get_config('smoke')
  config.dedup_against = str(tmp_path / 'no_such_folder')
  with pytest.raises(FileNotFoundError, match='no_such_folder'):
    predict.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_a_smoke_model_batch_the_devices_cannot_split_is_refused_before_it_trains(
    tmp_path, eight_devices):
  # It was refused once the model's config.json was written, advising a batch_size that is
  # predict's own, not the smoke model's; a model trained already needs no split.
  config = predict_config.get_config('smoke')
  config.cache_dir = str(tmp_path / 'cache')
  config.num_devices = 3
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match=r'smoke mode trains its cnn_cls model at batch_size=8, '
                     r'which does not split across 3 devices: set num_devices to one of '
                     r'\[1, 2, 4, 8\]$'):
    predict.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'smoke_model_cnn_cls'))
  config.num_devices = 4
  predict.train_and_evaluate(config, workdir)
  config.num_devices = 3
  assert predict.train_and_evaluate(config, workdir)['num_predicted'] > 0


def test_the_inputs_kept_beside_skipped_near_duplicates_keep_their_own_crops(tmp_path):
  predict.write_phantom_folder(str(tmp_path / 'in'), 2, seed=0)
  (tmp_path / 'ref' / 'yes').mkdir(parents=True)
  shutil.copy(tmp_path / 'in' / 'no' / 'phantom_0.png', tmp_path / 'ref' / 'yes' / 'a.png')
  config = types.SimpleNamespace(dedup_against=str(tmp_path / 'ref'), dedup_threshold=0.95,
                                 num_threads=1)
  run = types.SimpleNamespace(image_size=64, margin=0.05)
  with inputs.Reader() as reader:
    prepared = predict.prepare(predict.file_items(inputs.list_inputs(str(tmp_path / 'in')), reader),
                               64, 0.05, thumbnails=True)
    kept, dropped = predict._drop_near_duplicates(config, str(tmp_path / 'out'), run, prepared,
                                                  reader)
  assert dropped == 1 and len(kept.ok) == len(kept.infos) == len(kept.images) == 3
  own = {prepared.items[i].path: (info, image)
         for i, info, image in zip(prepared.ok, prepared.infos, prepared.images)}
  for i, info, image in zip(kept.ok, kept.infos, kept.images):
    assert own[kept.items[i].path][0] == info
    np.testing.assert_array_equal(own[kept.items[i].path][1], image)


def test_clearing_an_earlier_prediction_drops_a_linked_map_folder_not_what_it_points_to(
    tmp_path):
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  (elsewhere / 'keep.txt').write_text('mine')
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'maps').symlink_to(elsewhere)
  predict._clear_outputs(str(tmp_path / 'run'))
  assert not os.path.lexists(tmp_path / 'run' / 'maps')
  assert (elsewhere / 'keep.txt').read_text() == 'mine'


def test_os_metadata_in_a_folder_is_not_an_input(tmp_path):
  (tmp_path / 'yes').mkdir()
  (tmp_path / 'yes' / 'a.png').write_bytes(b'x')
  (tmp_path / '.DS_Store').write_bytes(b'x')
  (tmp_path / 'yes' / 'Thumbs.db').write_bytes(b'x')
  assert [f.path for f in inputs.list_inputs(tmp_path)] == ['yes/a.png']


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='needs named pipes')
def test_a_pipe_is_refused_before_it_is_read(tmp_path):
  os.mkfifo(tmp_path / 'pipe')
  with pytest.raises(ValueError, match='is not a file, a folder or a zip'):
    inputs.check_input(tmp_path / 'pipe')


def test_a_file_named_zip_that_is_not_one_is_refused(tmp_path):
  (tmp_path / 'scans.zip').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='is named .zip but is not a readable zip archive'):
    inputs.list_inputs(tmp_path / 'scans.zip')
