"""BrainCNN task helpers: test ROC AUC and validation loss come from its logits, not rounded
probabilities; eval_ids.json and test_scores.npz are rewritten only when they change; the
best checkpoint is picked on the validation slices."""
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn import metrics as sk

from brainjax.evaluation import study_table
from brainjax.data.examples import Examples
from brainjax.models import BrainCNN
from brainjax.tasks import cnn_cls
from brainjax.tasks import datasets
from brainjax.train import reporting
from brainjax.train.state import TrainState
from configs import cnn_cls as cnn_config

# logit(tumour) - logit(healthy): every one above 17, where a float32 P(tumour) is 1.0,
# but a healthy slice at 18 and 19 ranks below every tumour slice.
MARGINS = np.array([20., 25., 30., 18., -5., 40., 19.])
LABELS = np.array([1, 1, 1, 0, 0, 1, 0], np.int32)


def _examples():
  images = np.zeros((len(MARGINS), 8, 8, 1), np.float32)
  images[:, 0, 0, 0] = MARGINS  # the stub model reads its margin from the first pixel
  return Examples(images=images, labels=LABELS, ids=np.array([str(i) for i in range(7)]))


def _stub_logits(model, variables, images):
  del model, variables
  return jnp.stack([jnp.zeros(len(images)), images[:, 0, 0, 0]], axis=1)


def test_confident_scores_keep_their_order(monkeypatch):
  monkeypatch.setattr(cnn_cls, 'predict_logits', _stub_logits)
  examples = _examples()
  metrics = cnn_cls.metrics_of_log_odds(
      examples.labels, cnn_cls.predict_log_odds(None, None, examples.images, batch_size=4))
  assert metrics['auroc'] == sk.roc_auc_score(LABELS, MARGINS) == 1.0
  assert (metrics['tp'], metrics['fp'], metrics['tn'], metrics['fn']) == (4, 2, 1, 0)


def test_validation_loss_is_the_logits_cross_entropy(monkeypatch):
  monkeypatch.setattr(cnn_cls, 'predict_logits', _stub_logits)
  out = cnn_cls.validation_metrics(None, None, _examples(), batch_size=4)
  probabilities = 1 / (1 + np.exp(-MARGINS))
  np.testing.assert_allclose(out['loss'], sk.log_loss(LABELS, probabilities, labels=[0, 1]),
                             rtol=1e-6)
  assert out['loss'] > 5.2  # not 4.56, the clipped float32 probabilities' loss
  assert out['accuracy'] == np.mean((MARGINS >= 0) == LABELS)


def test_the_train_step_learns_which_slices_are_tumours():
  # Bright slices are tumours: a step that fits the labels (not, say, their complement) gets
  # every slice right within a few dozen steps, and reports its batch accuracy.
  rng = np.random.default_rng(0)
  labels = np.arange(16, dtype=np.int32) % 2
  images = (0.2 + 0.6 * labels[:, None, None, None]
            + 0.05 * rng.standard_normal((16, 8, 8, 1))).astype(np.float32)
  model = BrainCNN(conv_widths=(4, 4), dense_widths=(8, 4))
  variables = jax.jit(model.init, static_argnames='train')(jax.random.PRNGKey(0), images,
                                                           train=False)
  state = TrainState.create(variables, optax.adam(1e-2))
  step = jax.jit(functools.partial(cnn_cls.train_step, model=model))
  batch = {'image': images, 'label': labels}
  for i in range(40):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
  assert float(metrics['accuracy']) > 0.9
  predicted = np.argmax(cnn_cls.predict_logits(model, state.variables, images), axis=-1)
  np.testing.assert_array_equal(predicted, labels)


def _identity(path):
  """Changes when a file is rewritten: in place (its time) or replaced (its inode)."""
  stat = path.stat()
  return stat.st_ino, stat.st_mtime_ns


def test_eval_ids_are_written_once_and_again_only_when_they_change(tmp_path):
  # (A rerun stopped before it changed its results must leave its workdir untouched.)
  def sets(*ids):
    return Examples(np.zeros((len(ids), 2, 2, 1), np.float32), np.zeros(len(ids), np.int32),
                    np.array(ids))
  path = tmp_path / 'eval_ids.json'
  reporting.write_eval_ids(str(tmp_path), val=sets('b', 'a'), test=sets('c'))
  assert json.loads(path.read_text()) == {'val': ['a', 'b'], 'test': ['c']}
  written = _identity(path)
  time.sleep(0.01)
  reporting.write_eval_ids(str(tmp_path), val=sets('a', 'b'), test=sets('c'))
  assert _identity(path) == written
  reporting.write_eval_ids(str(tmp_path), val=sets('a'), test=sets('c'))
  assert json.loads(path.read_text()) == {'val': ['a'], 'test': ['c']}


def test_test_scores_are_the_auroc_s_and_rewritten_only_when_they_change(tmp_path):
  # (the study's ROC curves read them; a rerun that changed nothing leaves the file alone)
  assert reporting.read_test_scores(str(tmp_path)) is None
  log_odds = MARGINS.astype(np.float64)
  reporting.write_test_scores(str(tmp_path), _examples(), score=log_odds)
  path = tmp_path / reporting.TEST_SCORES
  written = _identity(path)
  scores = reporting.read_test_scores(str(tmp_path))
  assert list(scores['id']) == [str(i) for i in range(7)]
  assert cnn_cls.metrics_of_log_odds(scores['label'], scores['score'])['auroc'] == (
      cnn_cls.metrics_of_log_odds(LABELS, log_odds)['auroc'])
  time.sleep(0.01)
  reporting.write_test_scores(str(tmp_path), _examples(), score=log_odds)
  assert _identity(path) == written
  reporting.write_test_scores(str(tmp_path), _examples(), score=-log_odds)
  np.testing.assert_array_equal(reporting.read_test_scores(str(tmp_path))['score'], -log_odds)


def test_checkpoints_are_picked_on_the_validation_slices(validated_on):
  # Test slices scoring the epochs would pick the checkpoint that is then tested on them.
  config = cnn_config.get_config('real,smoke')
  validated, eval_ids = validated_on(cnn_cls, 'validation_metrics', config)
  assert sorted(map(str, validated.ids)) == eval_ids['val']
  assert set(validated.labels) == {0, 1} and not set(eval_ids['val']) & set(eval_ids['test'])
  # ... the split's validation slices, as the split itself gives them (from the cache).
  source = datasets.real_source(config)
  parts = datasets.classifier_split(config, source, 'cnn')
  assert sorted(map(str, source.examples.ids[parts.val])) == eval_ids['val']


def test_the_train_step_runs_the_network_in_train_mode():
  # Dropout draws its masks from the step's rng, and BatchNorm normalises with the batch's
  # statistics and moves its running ones (evaluation reads those).
  images = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
  model = BrainCNN(conv_widths=(4, 4), dense_widths=(8, 4))
  variables = jax.jit(model.init, static_argnames='train')(jax.random.PRNGKey(0), images,
                                                           train=False)
  state = TrainState.create(variables, optax.sgd(0.0))
  step = jax.jit(functools.partial(cnn_cls.train_step, model=model))
  batch = {'image': images, 'label': np.array([0, 1, 0, 1], np.int32)}
  stepped, first = step(state, batch, jax.random.PRNGKey(1))
  _, second = step(state, batch, jax.random.PRNGKey(2))
  assert float(first['loss']) != float(second['loss'])
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stepped.batch_stats),
                                                    jax.tree.leaves(state.batch_stats))]
  assert moved and all(moved)


def test_a_log_odds_of_zero_is_called_tumour(monkeypatch):
  # P(tumour) = 0.5 is a tumour call (log-odds >= 0), in the test metrics as in validation.
  metrics = cnn_cls.metrics_of_log_odds(np.array([1, 0, 0]), np.array([0.0, -1.0, -2.0]))
  assert (metrics['tp'], metrics['fn'], metrics['tn'], metrics['fp']) == (1, 0, 2, 0)
  monkeypatch.setattr(cnn_cls, 'predict_logits', _stub_logits)
  images = np.zeros((2, 8, 8, 1), np.float32)  # margins 0 (the stub reads the first pixel)
  tumours = Examples(images=images, labels=np.array([1, 1], np.int32), ids=np.array(['a', 'b']))
  assert cnn_cls.validation_metrics(None, None, tumours, batch_size=4)['accuracy'] == 1.0


def test_the_printed_table_row_puts_each_metric_in_its_column():
  # Accuracy, precision, recall, F1, ROC AUC, in percent (the study's Table 1 order).
  metrics = dict(accuracy=0.11, precision=0.22, recall=0.33, f1=0.44, auroc=0.555)
  header, rule, row = study_table.run_table('cnn_cls', 'real', metrics).splitlines()
  assert row == '| CNN | real | 11.00 | 22.00 | 33.00 | 44.00 | 55.50 |'
  assert [c.strip() for c in header.split('|')[3:-1]] == [
      'Accuracy %', 'Precision %', 'Recall %', 'F1 %', 'ROC AUC %']
  # A run on real slices records the nearest-neighbour baseline on its split: printed below.
  both = {**metrics, **{f'nearest_neighbour_{k}': v / 2 for k, v in metrics.items()}}
  _, _, *rows = study_table.run_table('cnn_cls', 'real', both).splitlines()
  assert rows == [row,
                  '| Thumbnail 1-NN (no learning) | real | 5.50 | 11.00 | 16.50 | 22.00 | 27.75 |']
  cvae = {f'{r}_{k}': v for r in ('giaem', 'global_kmeans') for k, v in metrics.items()}
  _, _, *rows = study_table.run_table('cvae_cls', 'mixed', cvae).splitlines()
  assert rows == [f'| VAE ({name}) | mixed | 11.00 | 22.00 | 33.00 | 44.00 | 55.50 |'
                  for name in ('GIAEM', 'Global KMeans')]
