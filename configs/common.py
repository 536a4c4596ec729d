"""Fields every brainjax config shares, and the `name.py:variant,modifier` parser.

A config string such as `configs/cnn_cls.py:synthetic,smoke` reaches `get_config` as
'synthetic,smoke'. `parse_arg` turns it into options: one variant and any modifiers (in
the style of big_vision). Values are set with `--config.<field>=<value>`. `check_values`
refuses values no run can use, before any work.
"""
import math

import ml_collections


def parse_arg(arg, variants, modifiers=('smoke',)):
  """Parses 'variant,modifier' against the allowed words of one config file.

  Returns an ml_collections.ConfigDict with `variant` (the one chosen, first in
  `variants` by default) and one boolean per modifier. Anything unknown is a one-line
  ValueError.
  """
  options = {'variant': variants[0], **{m: False for m in modifiers}}
  chosen = []
  for word in filter(None, (w.strip() for w in (arg or '').split(','))):
    if '=' in word:
      raise ValueError(f'{word!r}: set values with --config.<field>=<value>, not in the '
                       'config string')
    if word in variants:
      chosen.append(word)
    elif word in modifiers:
      options[word] = True
    else:
      raise ValueError(f'unknown config word {word!r}; variants: {list(variants)}, '
                       f'modifiers: {list(modifiers)}')
  if len(chosen) > 1:
    raise ValueError(f'choose one variant of {list(variants)}, got {chosen}')
  if chosen:
    options['variant'] = chosen[0]
  return ml_collections.ConfigDict(options)


def data_config():
  """Where the slices come from and how they are preprocessed (brainjax/data/sources.py)."""
  return ml_collections.ConfigDict(dict(
      dataset='phantom',  # 'phantom' (embedded, no download) | 'br35h' | 'folder'
      data_dir='',  # br35h: the unzipped Kaggle folder or its zip; folder: any yes/ + no/ folder
      num_per_class=1500,  # phantom: slices per class; others: 0 = all, N = first N
      image_size=128,
      margin=0.05,  # blank border around the brain's bounding box, as a fraction of its side
      seed=0,  # phantom generator seed
  ))


def base_config(task, name):
  """The fields shared by every task; `name` (e.g. 'vae_gen_positive') names the default workdir."""
  config = ml_collections.ConfigDict()
  config.task = task
  config.name = name
  config.seed = 0
  config.data = data_config()
  config.cache_dir = ''  # preprocessed-data cache; '' = $BRAINJAX_CACHE or ~/.cache/brainjax
  config.split = 'random'  # 'random' (the study's) | 'grouped' (near-duplicates kept in one split)
  config.dedup_threshold = 0.98  # thumbnail correlation above which two slices are one group

  config.num_epochs = 10
  config.batch_size = 64  # global batch, split across devices
  config.learning_rate = 1e-3
  config.half_precision = False  # bfloat16 activations (GPU/TPU); params stay float32
  config.num_devices = -1  # data-parallel over this many local devices (of each host); -1 = all
  config.multihost = False  # call jax.distributed.initialize() first

  config.log_every_steps = 20
  config.checkpoint_every_secs = 60.0  # latest checkpoint at most this often (tried at log steps
  # and epoch ends) and at the end
  config.keep_checkpoints = 2
  return config


def apply_smoke(config):
  """Tiny data, few steps (each config shrinks its own network): the whole task end to end in
  well under a minute."""
  config.data.num_per_class = 24
  config.num_epochs = 2
  config.batch_size = 8
  config.log_every_steps = 2
  config.checkpoint_every_secs = 0.0  # at every log step and epoch end: resume is tested mid-epoch
  return config


def _finite(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v):
  return isinstance(v, int) and not isinstance(v, bool)  # (True would be taken as 1)


# Top-level numeric fields a config may have: (what a valid value passes, how to say it).
_RANGES = {
    'seed': (lambda v: _int(v) and 0 <= v < 2 ** 32, 'an integer in [0, 2**32)'),
    'learning_rate': (lambda v: _finite(v) and v > 0, 'a finite number > 0'),
    'b1': (lambda v: _finite(v) and 0 <= v < 1, 'in [0, 1)'),
    'b2': (lambda v: _finite(v) and 0 <= v < 1, 'in [0, 1)'),
    'weight_decay': (lambda v: _finite(v) and v >= 0, 'a finite number >= 0'),
    'kl_weight': (lambda v: _finite(v) and v >= 0, 'a finite number >= 0'),
    'plateau_factor': (lambda v: _finite(v) and 0 < v <= 1, 'in (0, 1]'),
    'plateau_patience': (lambda v: _int(v) and v >= 0, 'an integer >= 0'),
    'num_epochs': (lambda v: _int(v) and v >= 1, 'an integer >= 1'),
    'batch_size': (lambda v: _int(v) and v >= 1, 'an integer >= 1'),
    'log_every_steps': (lambda v: _int(v) and v >= 1, 'an integer >= 1'),
    # (0 checkpoints kept: a rerun could not resume)
    'keep_checkpoints': (lambda v: _int(v) and v >= 1, 'an integer >= 1'),
    'checkpoint_every_secs': (lambda v: _finite(v) and v >= 0, 'a finite number >= 0'),
    'split': (lambda v: v in ('random', 'grouped'), "'random' or 'grouped'"),
    'dedup_threshold': (lambda v: _finite(v) and -1 <= v < 1, 'a correlation in [-1, 1)'),
}
_NETWORKS = ('model', 'generator', 'discriminator')


def check_values(config):
  """A ValueError naming the first field whose value no run can use: an optimiser setting
  out of range (a negative learning rate trains away from the data without a word), a run
  length, batch or checkpoint setting below 1, a split mode or near-duplicate threshold no
  split takes, or a network size below 1 (a traceback deep in Flax)."""
  for field, (valid, what) in _RANGES.items():
    if field in config and not valid(config[field]):
      raise ValueError(f'{field}={config[field]!r}: it must be {what}')
  # (jax.random.PRNGKey drops the bits above 32: export.seed=2**32 would export seed 0's
  # images under another seed's name, and 2**63 is an OverflowError after training)
  valid_seed, what = _RANGES['seed']
  if 'export' in config and not valid_seed(config.export.seed):
    raise ValueError(f'export.seed={config.export.seed!r}: it must be {what}')
  for network in _NETWORKS:
    for field, value in (config[network].items() if network in config else ()):
      if field.endswith('_rate'):
        if not (_finite(value) and 0 <= value < 1):
          raise ValueError(f'{network}.{field}={value!r}: it must be in [0, 1)')
      elif value is not None:
        sizes = value if isinstance(value, (tuple, list)) else (value,)
        if not sizes or not all(_int(n) and n >= 1 for n in sizes):
          raise ValueError(f'{network}.{field}={value!r}: network sizes must be integers >= 1')
