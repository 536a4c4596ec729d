"""BrainCVAE (study 5.2): an anomaly detector trained on healthy slices only.

Training data is real, synthetic or mixed healthy slices; the best checkpoint (validation
loss on the real healthy validation slices) reconstructs the real val/test sets, and the
four anomaly rules (brainjax/anomaly/) turn reconstruction errors into tumour calls.
"""
import dataclasses
import functools
import math
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from brainjax import models
from brainjax.anomaly import evaluate as anomaly_evaluate
from brainjax.anomaly import figures
from brainjax.anomaly import giaem
from brainjax.anomaly import recon_error
from brainjax.data import pipeline
from brainjax.data.examples import NEGATIVE
from brainjax.evaluation import study_table
from brainjax.tasks import datasets
from brainjax.tasks import variational
from brainjax.train import checkpoints
from brainjax.train import compile_options
from brainjax.train import loop
from brainjax.train import parallel
from brainjax.train import reporting
from brainjax.train.state import TrainState
from brainjax.train.state import check_networks
from brainjax.train.state import init_variables

FIGURE = os.path.join('figures', 'anomaly_examples.png')


def create_model(config):
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  return models.get_model('cvae', **config.model, image_size=config.data.image_size, dtype=dtype)


def create_train_state(config, model, rng):
  size = config.data.image_size
  variables = init_variables(model, rng, jnp.zeros((1, size, size, 1)),
                             jnp.zeros((1, model.latent_dim)))
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)
  return TrainState.create(variables, tx)


def cvae_reconstruction_loss(recon, images):
  """Squared error summed over each image's pixels (the decoder ends in a sigmoid)."""
  return jnp.sum(jnp.square(recon - images), axis=(1, 2, 3))


@compile_options.jit(static_argnames='model')
def _batch_loss_sum(model, variables, images, noise, weight):
  return variational.eval_loss_sum(model, cvae_reconstruction_loss, variables, images, noise,
                                   weight)


def validation_loss(model, variables, images, seed, batch_size=256):
  """Negative ELBO of the healthy validation slices, with fixed noise (comparable across epochs):
  the mean over slices. Every batch has one shape (the last padded, its padding weighted 0),
  so it compiles once."""
  total = 0.0
  key = jax.random.PRNGKey(seed)
  for i, batch in enumerate(pipeline.eval_batches({'image': images}, batch_size)):
    # (folded in, not seed + i: seed 0's second batch would get seed 1's first batch's noise)
    noise = jax.random.normal(jax.random.fold_in(key, i), (batch_size, model.latent_dim))
    total += float(_batch_loss_sum(model, variables, batch['image'], noise, batch['weight']))
  return {'loss': total / max(len(images), 1)}


def reconstruct(model, variables, images):
  """The deterministic (z = mean) reconstruction: the one whose errors the anomaly rules read
  (unless anomaly.num_latent_samples > 1, see error_maps), and the figure's."""
  return model.apply(variables, images, method=model.reconstruct)


# (for a few slices outside reconstruction_error: op by op, the forward pass took seconds of
# small compilations)
_reconstruct_jitted = compile_options.jit(reconstruct, static_argnames='model')


@dataclasses.dataclass(frozen=True)
class Reconstruction:
  """`reconstruct` with one model, as `recon_error.reconstruction_error` takes it. Equal for
  equal models (a functools.partial is equal only to itself), so that function's jitted
  batches, which take it as a static argument, compile once per network and batch shape,
  whoever builds it and how often."""
  model: models.BrainCVAE

  def __call__(self, variables, images, keys=None):
    """The mean reconstruction, or with keys (one per image) one from a latent sample."""
    if keys is None:
      return reconstruct(self.model, variables, images)
    mean, logvar = self.model.apply(variables, images, method=self.model.encode)
    noise = jax.vmap(lambda key: jax.random.normal(key, mean.shape[1:], mean.dtype))(keys)
    return self.model.apply(variables, mean + jnp.exp(logvar / 2) * noise,
                            method=self.model.decode)


def latent_samples_key(seed):
  """The key of the latent samples of every error map of a run's model, validation, test and
  predict alike (each image's own from its pixels, see recon_error)."""
  return loop.reserved_key(seed, 'latent_samples')


def error_maps(model, variables, images, anomaly_config, rng):
  """The normalised error maps the rules read: of the mean reconstruction, or averaged over
  anomaly_config.num_latent_samples latent samples drawn from `rng` (see
  recon_error.reconstruction_error: in calls of IMAGES_PER_CALL, so predict gets a run's maps)."""
  samples = anomaly_config.get('num_latent_samples', 1)  # (runs older than the setting: 1)
  return recon_error.reconstruction_error(
      Reconstruction(model), images, variables=variables, num_samples=samples,
      rng=rng if samples > 1 else None)


def make_train_step(config, model):
  """The train step `loop.fit` compiles, bound to this run's model (the bench times the same)."""
  del config  # (the other tasks' steps read settings from it)
  return functools.partial(variational.train_step, model=model,
                           reconstruction_loss=cvae_reconstruction_loss)


def check_config(config):
  """A ValueError or FileNotFoundError for a network, training data or anomaly settings no
  run can use (launch.py calls it before writing anything)."""
  check_networks(lambda rng: create_train_state(config, create_model(config), rng))
  datasets.check_training_data(config)
  anomaly_evaluate.check_config(config.anomaly)
  size = config.data.image_size
  if 'dbscan' in config.anomaly.rules and max(config.anomaly.dbscan_eps) < 1 / size:
    # (a constant rule, scored in Table 1 as a real 50% ROC AUC)
    raise ValueError(f'anomaly.dbscan_eps={tuple(config.anomaly.dbscan_eps)} are all under one '
                     f'pixel step, 1/{size} at data.image_size={size}: no pixel would have a '
                     f'neighbour, no cluster grow past one pixel; add an eps of at least '
                     f'{math.ceil(1e6 / size) / 1e6}, or leave dbscan out of anomaly.rules')


def train_and_evaluate(config, workdir):
  anomaly_evaluate.check_config(config.anomaly)  # before training (the data: training_examples)
  source = datasets.real_source(config)
  examples = source.examples
  split = datasets.classifier_split(config, source, 'anomaly')
  train = datasets.training_examples(config, examples.take(split.train), label=NEGATIVE,
                                     source=source)
  val, test = examples.take(split.val), examples.take(split.test)
  data_key = datasets.training_key(config, train, val)
  loop.check_resume(config, workdir, len(train), data_key)  # a refused rerun changes nothing
  if parallel.is_first_host():
    # An earlier evaluation's results (a rerun may change anomaly.*): none until this one's
    # are written, so an interrupted or failed rerun leaves no old ones under its config.
    reporting.remove_metrics_json(workdir)
    for stale in (*(f'{name}.npy' for name in anomaly_evaluate.FITTED_ARRAYS), FIGURE,
                  reporting.TEST_SCORES):
      if os.path.exists(os.path.join(workdir, stale)):
        os.remove(os.path.join(workdir, stale))
    reporting.write_eval_ids(workdir, val=val, test=test)
  logging.info('BrainCVAE on %s healthy data: %d train; val %d (%d tumour), test %d (%d tumour).',
               config.train_data, len(train), len(val), int(val.labels.sum()), len(test),
               int(test.labels.sum()))

  model = create_model(config)
  state = create_train_state(config, model, jax.random.PRNGKey(config.seed))
  val_healthy = val.with_label(NEGATIVE).images
  state, summary = loop.fit(
      config, workdir, state, make_train_step(config, model), {'image': train.images},
      data_key=data_key,
      evaluate=lambda s: validation_loss(model, s.variables, val_healthy, config.seed))

  best = checkpoints.restore_best(workdir, state)
  errors_rng = latent_samples_key(config.seed)
  val_errors = error_maps(model, best.variables, val.images, config.anomaly, errors_rng)
  test_errors = error_maps(model, best.variables, test.images, config.anomaly, errors_rng)
  metrics, fitted, test_scores = anomaly_evaluate.evaluate_anomaly_rules(
      val_errors, val.labels, test_errors, test.labels, config.anomaly, test_masks=test.masks)
  metrics.update(train_size=len(train), val_size=len(val), test_size=len(test),
                 best_val_loss=summary['best_val_loss'], steps=summary['steps'])
  print(study_table.run_table(config.task, config.train_data, metrics))
  if not parallel.is_first_host():  # the first host writes the run's files
    return metrics
  for name, array in fitted.items():  # what predict needs to apply the rules to new slices
    reporting.save_array(workdir, f'{name}.npy', array)
  reporting.write_test_scores(workdir, test, **test_scores)  # (the study's ROC curves)
  # Study Figures 4 and 5: a few test slices with the GIAEM rule's anomalous pixels.
  if 'giaem_anomaly_threshold' in metrics:
    samples = config.anomaly.num_latent_samples
    pick = figures.pick_examples(test.labels, per_class=3, seed=config.seed)
    rule = giaem.giaem(test_errors[pick], metrics['giaem_anomaly_threshold'],
                       metrics['giaem_tumor_index'])
    figures.save_anomaly_figure(
        os.path.join(workdir, FIGURE), test.images[pick],
        np.asarray(_reconstruct_jitted(model, best.variables, test.images[pick])),
        test_errors[pick], rule.region, test.labels[pick], rule.prediction,
        names=list(test.ids[pick]), title=f'BrainCVAE ({config.train_data} data), GIAEM pixels'
        + (f' (errors averaged over {samples} latent samples)' if samples > 1 else ''))
  reporting.write_metrics_json(workdir, metrics)
  return metrics
