"""What the VAE and GAN tasks share: their training slices, sample grids and the export."""
import os
import re

from absl import logging
import jax
import numpy as np

from brainjax import threads
from brainjax.data import synthetic
from brainjax.models import layers
from brainjax.tasks import datasets
from brainjax.train import checkpoints
from brainjax.train import loop
from brainjax.train import parallel
from brainjax.train import reporting


def latent_noise(rng, num, latent_dim, first=0):
  """(num, latent_dim) standard normal rows of samples first .. first + num - 1 of rng, each
  from its own key (layers.index_keys, the scheme of the training noise too)."""
  keys = layers.index_keys(rng, first, num)
  return jax.vmap(lambda key: jax.random.normal(key, (latent_dim,)))(keys)


# Images per sampler call, whatever the export's size: XLA rounds each batch shape's program its
# own way, so an export drawn in other batches (or a smaller one) had a few pixels one grey level
# off, other data to the classifier trained on it, which refused the re-export.
SAMPLES_PER_CALL = 100


def sample_in_batches(sample_fn, variables, rng, num):
  """Calls `sample_fn(variables, rng, SAMPLES_PER_CALL, first)` (images first .. first +
  SAMPLES_PER_CALL - 1 of the samples of rng, see latent_noise) until `num` images exist, the
  last call's cut: one compiled shape, so image i is the same in every export of rng."""
  batches = [np.asarray(sample_fn(variables, rng, SAMPLES_PER_CALL, first))[:num - first]
             for first in range(0, num, SAMPLES_PER_CALL)]
  return np.concatenate(batches)


def sample_grid_callback(workdir, sample_fn, variables_of, seed, num=32):
  """An epoch-end `evaluate` for `loop.fit` saving a grid of samples from fixed noise.

  `sample_fn(variables, rng, num, first=0)` returns images in [0, 1] (samples first ..
  first + num - 1 of rng); `variables_of(state)` picks the generator's variables out of a
  training state.
  """
  # (With fold_in(PRNGKey(seed), 1) the grid's noise was that of step 1's first examples.)
  rng = loop.reserved_key(seed, 'sample_grid')

  def evaluate(state):
    images = np.asarray(sample_fn(variables_of(state), rng, num))
    if parallel.is_first_host():
      path = os.path.join(workdir, 'samples', f'step_{int(state.step):07d}.png')
      reporting.save_image_grid(path, images)
    return {'sample_mean': float(images.mean())}  # a collapsed generator shows here first

  return evaluate


def remove_sample_grids(workdir):
  """Deletes the grids `sample_grid_callback` wrote in workdir/samples: a run starting from
  step 0 there follows one that stopped before its first checkpoint, maybe with other
  settings and steps, whose grids would stand beside its own as if they were its."""
  folder = os.path.join(workdir, 'samples')
  for name in os.listdir(folder) if os.path.isdir(folder) else ():
    if re.fullmatch(r'step_\d{7}\.png', name):
      os.remove(os.path.join(folder, name))


def export(config, workdir, sample_fn, variables, step, source):
  """Writes config.export.num_samples images of the config's class as a synthetic dataset,
  recording the split (of the real `source`) its generator trained on."""
  out_dir = config.export.dir or os.path.join(workdir, 'synthetic')
  rng = jax.random.PRNGKey(config.export.seed)
  images = sample_in_batches(sample_fn, variables, rng, config.export.num_samples)
  # ('checkpoint': the generator's workdir; the key stays, older exports are matched by it.)
  provenance = dict(generator=config.task, checkpoint=os.path.abspath(workdir),
                    checkpoint_step=int(step), seed=config.export.seed, data=config.data.dataset,
                    split_key=datasets.split_key(config, source))
  synthetic.write_synthetic(out_dir, images, datasets.LABEL_NAMES[config.label], provenance)
  logging.info('Exported %d synthetic %s slices to %s.', len(images), config.label, out_dir)
  return out_dir


def check_config(config):
  """A ValueError for a mode or export setting no run can use (before training, not after)."""
  if config.mode not in ('train', 'generate'):
    raise ValueError(f"mode={config.mode!r}; expected 'train' or 'generate'")
  if config.label not in datasets.LABEL_NAMES:
    raise ValueError(f'label={config.label!r}; expected one of {sorted(datasets.LABEL_NAMES)}')
  if not (isinstance(config.export.num_samples, int) and config.export.num_samples >= 1):
    raise ValueError(f'export.num_samples={config.export.num_samples!r}: it must be an integer '
                     '>= 1')
  # The export holds its samples in memory (float32) before it writes them: 10**12 of them
  # filled the memory once training had finished.
  size = config.data.image_size
  threads.check_fits_in_memory(config.export.num_samples * size ** 2 * 4,
                               f'export.num_samples={config.export.num_samples} slices of '
                               f'{size}x{size}', 'export fewer')
  if config.export.dir:  # (the default, <workdir>/synthetic, is the run's own)
    synthetic.check_export_target(config.export.dir)


def run(config, workdir, state, step_fn, sample_fn, variables_of):
  """The generator task: train (or, in mode 'generate', restore) then export.

  `step_fn` is the train step `loop.fit` compiles, `sample_fn(variables, rng, num, first=0)`
  the jitted sampler and `variables_of(state)` the generator's variables in a training state.
  """
  check_config(config)  # (launch.py checks it first; a direct caller here)
  source = datasets.real_source(config)
  train = datasets.generator_training_set(config, source, datasets.LABEL_NAMES[config.label])
  data_key = datasets.training_key(config, train)
  if config.mode == 'generate':
    state, meta = checkpoints.restore_latest(workdir, state)
    # The export records this data's split: the generator must have trained on it.
    loop.check_data_key(workdir, meta, data_key)
    loop.check_trained_steps(config, workdir, len(train), int(state.step))
    # A re-export changes what was exported, not what training measured.
    metrics_path = os.path.join(workdir, 'metrics.json')
    if os.path.isfile(metrics_path):
      summary = reporting.read_metrics_json(workdir)
    else:  # an unfinished run (killed, or stopped on a non-finite loss): say how far it got
      summary = dict(meta.get('summary', {}), steps=int(state.step))
      logging.warning('%s has not finished training: exporting its latest checkpoint, step %d.',
                      workdir, int(state.step))
  else:
    if parallel.is_first_host() and not checkpoints.holds_checkpoint(workdir):
      remove_sample_grids(workdir)
    evaluate = sample_grid_callback(workdir, sample_fn, variables_of, config.seed)
    logging.info('Training a %s generator on %d %s slices.', config.task, len(train), config.label)
    state, summary = loop.fit(config, workdir, state, step_fn, {'image': train.images},
                              data_key=data_key, evaluate=evaluate)
  summary.update(exported=config.export.num_samples)
  if parallel.is_first_host():  # (the other hosts hold the same generator)
    export(config, workdir, sample_fn, variables_of(state), state.step, source)
    reporting.write_metrics_json(workdir, summary)
  return summary
