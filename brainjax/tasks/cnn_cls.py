"""BrainCNN (study 5.2) trained on real, synthetic or mixed slices; tested on real slices."""
import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from brainjax import models
from brainjax.data import pipeline
from brainjax.evaluation import baseline
from brainjax.evaluation import classification
from brainjax.evaluation import study_table
from brainjax.tasks import datasets
from brainjax.train import checkpoints
from brainjax.train import compile_options
from brainjax.train import loop
from brainjax.train import parallel
from brainjax.train import reporting
from brainjax.train.state import TrainState
from brainjax.train.state import check_networks
from brainjax.train.state import init_variables


def create_model(config, axis_name=None):
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  return models.get_model('cnn', **config.model, dtype=dtype, axis_name=axis_name)


def create_train_state(config, model, rng):
  size = config.data.image_size
  variables = init_variables(model, rng, jnp.zeros((1, size, size, 1)))
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)
  return TrainState.create(variables, tx)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def train_step(state, batch, rng, *, model, axis_name=None):
  # One dropout key on every device: the model's ExampleDropout draws each example's mask from
  # its index in the global batch, so any device count trains the same.
  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
        rngs={'dropout': rng}, mutable=['batch_stats'])
    loss = cross_entropy(logits, batch['label']).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.mean_over_devices(grads, axis_name)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  metrics = parallel.mean_over_devices({'loss': loss, 'accuracy': accuracy}, axis_name)
  return state.apply_gradients(grads, batch_stats), metrics


@compile_options.jit(static_argnames='model')
def predict_logits(model, variables, images):
  return model.apply(variables, images, train=False).astype(jnp.float32)


def _per_slice(score, images, batch_size, empty):
  """score(batch) (a row per slice) of preprocessed (N, S, S, 1) slices in fixed-shape batches
  (one compiled shape), the padding rows dropped; `empty` for no slices."""
  parts = [np.asarray(score(batch['image']))[batch['weight'] > 0]
           for batch in pipeline.eval_batches({'image': images}, batch_size)]
  return np.concatenate(parts) if parts else empty


def predict_log_odds(model, variables, images, batch_size=256):
  """Tumour log-odds (N,), logit(tumour) - logit(healthy) in float64.

  The score to rank and to score a loss by: a float32 probability is exactly 1.0 from a
  margin of about 17 on (float64's from about 37), so confident calls would tie there,
  tumour and healthy alike (ROC AUC counts such ties one half), and a clipped log of it
  caps a confidently wrong slice's cross-entropy (at 16.1 for a clip of 1e-7).
  """
  def log_odds(x):
    logits = np.asarray(predict_logits(model, variables, x), np.float64)
    return logits[:, 1] - logits[:, 0]

  return _per_slice(log_odds, images, batch_size, np.zeros((0,), np.float64))


@compile_options.jit(static_argnames='model')
def _features(model, variables, images):
  return model.apply(variables, images, method=model.features).astype(jnp.float32)


def features(model, variables, images, batch_size=256):
  """Penultimate-layer activations (N, dense_widths[-1], 128 in the study): the feature space of
  the study's quality metrics."""
  return _per_slice(lambda x: _features(model, variables, x), images, batch_size,
                    np.zeros((0, model.dense_widths[-1]), np.float32))


def validation_metrics(model, variables, examples, batch_size=256):
  """Mean cross-entropy and accuracy of `examples` (picks the best checkpoint).

  The cross-entropy of the logits, as training's: log(1 + exp(-+margin)), not a clipped
  log of a float32 probability (which was 16.1 for any confidently wrong slice).
  """
  m = predict_log_odds(model, variables, examples.images, batch_size)
  y = np.asarray(examples.labels)
  loss = np.mean(np.logaddexp(0.0, np.where(y == 1, -m, m)))
  return {'loss': float(loss), 'accuracy': float(np.mean((m >= 0) == y))}


def metrics_of_log_odds(labels, log_odds):
  """classification_metrics: tumour if P(tumour) >= 0.5 (log-odds >= 0); ROC AUC of the
  log-odds (the probability's order, without its rounding ties at 1.0)."""
  return classification.classification_metrics(labels, (log_odds >= 0).astype(int), log_odds)


def make_train_step(config, model):
  """The train step `loop.fit` compiles, bound to this run's model (the bench times the same)."""
  del config  # (the other tasks' steps read settings from it)
  return functools.partial(train_step, model=model)


def check_config(config):
  """A ValueError or FileNotFoundError for a network or training data no run can use
  (launch.py calls it before writing anything)."""
  check_networks(lambda rng: create_train_state(config, create_model(config), rng))
  datasets.check_training_data(config)


def train_and_evaluate(config, workdir):
  source = datasets.real_source(config)
  examples = source.examples
  split = datasets.classifier_split(config, source, 'cnn')
  train = datasets.training_examples(config, examples.take(split.train), source=source)
  val, test = examples.take(split.val), examples.take(split.test)
  data_key = datasets.training_key(config, train, val)
  loop.check_resume(config, workdir, len(train), data_key)  # a refused rerun changes nothing
  if parallel.is_first_host():
    reporting.write_eval_ids(workdir, val=val, test=test)
  logging.info('BrainCNN on %s data: %d train, %d val, %d test slices.', config.train_data,
               len(train), len(val), len(test))

  devices = parallel.train_devices(config.num_devices)
  model = create_model(config, parallel.AXIS if len(devices) > 1 else None)
  state = create_train_state(config, model, jax.random.PRNGKey(config.seed))
  eval_model = create_model(config)  # evaluation runs outside the data-parallel step: no axis
  state, summary = loop.fit(
      config, workdir, state, make_train_step(config, model),
      {'image': train.images, 'label': train.labels}, data_key=data_key,
      evaluate=lambda s: validation_metrics(eval_model, s.variables, val))

  best = checkpoints.restore_best(workdir, state)
  log_odds = predict_log_odds(eval_model, best.variables, test.images)
  metrics = metrics_of_log_odds(test.labels, log_odds)
  metrics.update(train_size=len(train), val_size=len(val), test_size=len(test),
                 best_val_loss=summary['best_val_loss'], steps=summary['steps'])
  scores = {'score': log_odds}
  if config.train_data == 'real':  # what a lookup in the same training slices scores
    nearest = baseline.nearest_neighbour_scores(train.images, train.labels, test.images)
    scores[f'{baseline.PREFIX}score'] = nearest
    metrics.update(baseline.prefixed(baseline.metrics_of_scores(test.labels, nearest)))
  print(study_table.run_table(config.task, config.train_data, metrics))
  if parallel.is_first_host():
    # (before metrics.json: the run's end)
    reporting.write_test_scores(workdir, test, **scores)
    reporting.write_metrics_json(workdir, metrics)
  return metrics
