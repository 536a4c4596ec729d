"""The whole study: `configs/study.py:quick` (phantom, CPU, minutes) or `:paper` (real Br35H,
the study's settings, meant for a GPU). `smoke` makes every stage tiny (tests).

Stage settings come from each task's own config with the preset named here, then the
study's shared fields (data, seed, split mode, dedup_threshold, cache, devices, precision,
logging and checkpoints), then `overrides.<task>` (e.g.
--config.overrides.cnn_cls.num_epochs=3, or batch_size, learning_rate).
"""
import importlib

import ml_collections

from configs import common

# Each stage's config variant (the classifiers' real-data one; the other variants agree).
STAGES = {'vae_gen': 'positive', 'gan_gen': 'positive', 'cnn_cls': 'real', 'cvae_cls': 'real'}
# Stage settings a study exposes as --config.overrides.<task>.<field> (a flag sets only a
# field that exists, so they are written out), where the stage has them.
OVERRIDABLE = ('num_epochs', 'batch_size', 'learning_rate', 'plateau_patience')


def stage_overrides(preset, **changes):
  """overrides.<task>: each stage config's OVERRIDABLE values under `preset`, then `changes`."""
  overrides = {}
  for task, variant in STAGES.items():
    own = importlib.import_module(f'configs.{task}').get_config(f'{variant},{preset}')
    overrides[task] = {f: own[f] for f in OVERRIDABLE if f in own}
    overrides[task].update(changes.get(task, {}))
  return ml_collections.ConfigDict(overrides)


def get_config(arg=None):
  opts = common.parse_arg(arg, variants=('quick', 'paper'), modifiers=('smoke',))
  config = common.base_config('study', f'study_{opts.variant}' + '_smoke' * opts.smoke)
  config.preset = ''  # the modifier passed to every stage's config ('', 'paper' or 'smoke')
  config.generators = 'vae'  # comma-separated: vae, gan
  config.synthetic_sources = 'vae'  # generators whose exports train the synthetic/mixed rows
  config.split_modes = 'random'  # 'random,grouped' shows how much accuracy is leakage
  config.seeds = 1  # the whole study (generators included) repeats over seed, seed+1, ...
  config.num_synthetic = 300  # slices exported per generator and class
  config.knn_k = 3  # neighbours of the k-NN precision/recall estimate
  config.data.num_per_class = 300
  # The classifiers keep their configs' defaults (the reasons are there): on these 420
  # training slices BrainCNN reached 82% (test ROC AUC 0.91), and BrainCVAE's GIAEM and
  # DBSCAN rules ROC AUC 0.73 and 0.72. The generators train fewer steps than theirs (VAE 30
  # epochs of at most 210 slices, GAN 15).
  config.overrides = stage_overrides('', vae_gen=dict(num_epochs=30),
                                     gan_gen=dict(num_epochs=15))
  if opts.variant == 'paper':
    config.preset = 'paper'
    config.data.dataset = 'br35h'
    config.data.num_per_class = 0
    config.generators = config.synthetic_sources = 'vae,gan'
    config.split_modes = 'random,grouped'
    config.seeds = 3
    config.num_synthetic = 1500
    config.overrides = stage_overrides('paper')  # the stages' paper presets
  if opts.smoke:
    common.apply_smoke(config)
    config.preset = 'smoke'
    config.num_synthetic = 16
    config.overrides = stage_overrides('smoke', **{task: dict(num_epochs=1) for task in STAGES})
  # Each stage trains with its own settings (overrides) on a split of split_modes.
  del config.num_epochs, config.batch_size, config.learning_rate, config.split
  return config
