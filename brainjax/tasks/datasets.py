"""Which slices each task trains, validates and tests on.

Validation and test sets are always real slices, fixed by (data, split mode, seed), so the
real / synthetic / mixed variants of a classifier are scored on exactly the same images.
Generators train only on the CNN protocol's training slices, healthy ones only if also in the
anomaly protocol's training part, so no synthetic image is derived from a slice a classifier is
later validated or tested on. (Tumour slices are never anomaly training data: BrainCVAE's
validation and test sets hold every one; tumour exports never train it, as it trains on
healthy slices only.)
"""
import hashlib
import json
import os
import re

from absl import logging
import numpy as np

from brainjax.data import dedup
from brainjax.data import examples as examples_lib
from brainjax.data import layout
from brainjax.data import sources
from brainjax.data import splits
from brainjax.data import synthetic
from brainjax.data.examples import NEGATIVE, POSITIVE
from brainjax.train import reruns

LABEL_NAMES = {'negative': NEGATIVE, 'positive': POSITIVE}


def real_source(config):
  """All preprocessed real slices named by config.data (cached), with their raw thumbnails."""
  return sources.load_source(config.data, sources.resolve_cache_dir(config.cache_dir))


_CLASS_NAMES = {NEGATIVE: 'healthy', POSITIVE: 'tumour'}  # (folders: layout.CLASSES[label])


def _more_slices(config):
  """How to give a split more slices of each class."""
  return 'use more (data.num_per_class)' + (', or a dedup_threshold that groups fewer'
                                            if config.split == 'grouped' else '')


def classifier_split(config, source, protocol):
  """`split` for a classifier (protocol 'cnn' or 'anomaly'), refused when the data hold one
  class (e.g. an empty yes/ folder: accuracy 1.0 of nothing), or a set it trains, validates or
  tests on lacks a class it needs (too few slices, or a grouped split that kept them together)."""
  labels = source.examples.labels
  for label, name in _CLASS_NAMES.items():
    if not (labels == label).any():
      # (a Yes/ beside no/ is not read: say so, as for a folder with neither)
      data_dir = os.path.expanduser(config.data.get('data_dir') or '')
      hint = layout.misnamed_class_folders(layout.class_root(data_dir) or data_dir) if (
          data_dir and os.path.isdir(data_dir)) else ''
      raise ValueError(f'the real data hold no {name} slices (none readable in '
                       f'{layout.CLASSES[label]}/{hint}): a classifier needs both classes')
  parts = split(config, source, protocol)
  for part, ids in parts._asdict().items():
    needed = (NEGATIVE,) if (protocol, part) == ('anomaly', 'train') else (NEGATIVE, POSITIVE)
    for label in needed:
      if not (labels[ids] == label).any():
        raise ValueError(f'the {config.split} split (seed {config.seed}) leaves no '
                         f'{_CLASS_NAMES[label]} slices in the {part} set ({len(labels)} slices '
                         f'in all): {_more_slices(config)}')
  return parts


def split(config, source, protocol):
  """The `protocol` ('cnn' or 'anomaly') split of a real source in config.split mode.

  In 'grouped' mode two slices are near-duplicates if their preprocessed images or their
  raw files' thumbnails correlate above config.dedup_threshold, one of them flipped or
  rotated or not (dedup.py): each view misses copies the other catches (re-cropped copies;
  the same head on another canvas).
  """
  groups = near_duplicate_groups(config, source) if config.split == 'grouped' else None
  return splits.make_split(source.examples.labels, protocol=protocol, mode=config.split,
                           seed=config.seed, groups=groups, threshold=config.dedup_threshold)


def near_duplicate_groups(config, source):
  """The group of each slice of `source` that the grouped split keeps together."""
  return dedup.near_duplicate_groups(source.examples.images, config.dedup_threshold,
                                     extra_views=[source.raw_thumbnails])


def groups_digest(groups):
  """Which slices share a group, whatever the groups' numbers: the grouped split is a
  function of it (and of the labels and settings)."""
  _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
  rank = np.empty(len(first), np.int64)
  rank[np.argsort(first)] = np.arange(len(first))  # groups numbered by their first slice
  return hashlib.sha256(rank[inverse].astype('<i8').tobytes()).hexdigest()


def slices_digest(examples):
  """Which slices a source holds (their ids and labels): files added to or removed from a
  data folder change it, and with it the split."""
  text = json.dumps(dict(ids=[str(i) for i in examples.ids], labels=examples.labels.tolist()))
  return hashlib.sha256(text.encode()).hexdigest()


def split_key(config, source=None):
  """What decides which real slices are train, validation and test: a generator's export
  records it, and a classifier reads only exports whose generator saw its own split.

  The settings, and with `source` (the real source read) the slices it holds under 'slices'
  and, for the grouped split, which of them are near-duplicates under 'groups' (a file
  replaced under its name can change them, and with them the whole split).
  """
  data = config.data.to_dict()
  if data.get('data_dir'):
    data['data_dir'] = os.path.realpath(data['data_dir'])
  key = dict(data=data, split=config.split, seed=config.seed,
             dedup_threshold=config.dedup_threshold)
  if source is not None:
    key['slices'] = slices_digest(source.examples)
    if config.split == 'grouped':
      key['groups'] = groups_digest(near_duplicate_groups(config, source))
  return json.loads(json.dumps(key))


def generator_training_slices(labels, cnn_train, anomaly_train, label):
  """bool mask: the generator of class `label` trains on the slices of that class in the CNN
  protocol's training part (indices), healthy ones only if also in the anomaly protocol's."""
  keep = np.zeros(len(labels), bool)
  keep[cnn_train] = True
  if label == NEGATIVE:  # (BrainCVAE validates and tests on healthy slices too)
    in_anomaly_train = np.zeros(len(labels), bool)
    in_anomaly_train[anomaly_train] = True
    keep &= in_anomaly_train
  return keep & (labels == label)


def generator_training_set(config, source, label):
  """Slices of class `label` in the CNN protocol's training part; healthy ones only if also
  in the anomaly protocol's (see the module docstring)."""
  examples = source.examples
  anomaly_train = split(config, source, 'anomaly').train if label == NEGATIVE else None
  train = examples.take(generator_training_slices(
      examples.labels, split(config, source, 'cnn').train, anomaly_train, label))
  if not len(train):
    raise ValueError(f'no {_CLASS_NAMES[label]} slices to train on: none readable in '
                     f'{layout.CLASSES[label]}/, or the {config.split} split (seed {config.seed}) '
                     f'keeps none for training; {_more_slices(config)}')
  return train


def _export_dirs(config):
  dirs = [d.strip() for d in config.synthetic_dirs.split(',') if d.strip()]
  if not dirs:
    raise ValueError('config.synthetic_dirs is empty: name the synthetic exports to train on')
  named = {}
  for d in dirs:  # (one named twice would train on its slices twice, off the class balance)
    real = os.path.realpath(d)
    if real in named:
      raise ValueError(f'synthetic_dirs={config.synthetic_dirs!r} names one export twice '
                       f'({named[real]} and {d}): name each once')
    named[real] = d
  return dirs


_TRAIN_DATA = ('real', 'synthetic', 'mixed')


def _export_command(export_dir):
  """The command that exports into export_dir: a generator's default workdir names its config
  (the smoke variant's too: the full one wrote another folder), any other folder export.dir."""
  default = re.fullmatch(r'(?:.*/)?runs/(vae|gan)_gen_(positive|negative)(_smoke)?/synthetic/?',
                         export_dir)
  if default:
    kind, label, smoke = default.groups()
    return f'python launch.py --config=configs/{kind}_gen.py:{label}{",smoke" * bool(smoke)}'
  return f'a generator run with --config.export.dir={export_dir}'


def check_training_data(config, source=None):
  """A classifier's train_data, and for synthetic or mixed data the exports it names: each
  present and from a generator of this run's split. Cheap: launch.py runs it before it
  writes anything, with the settings alone; a task, once it has read the real `source`, with
  the slices it holds too."""
  if config.train_data not in _TRAIN_DATA:
    raise ValueError(f'train_data={config.train_data!r}; expected one of {_TRAIN_DATA}')
  if config.train_data == 'real':
    return []
  dirs = _export_dirs(config)
  for d in dirs:
    if not os.path.isdir(d):
      raise FileNotFoundError(f'no synthetic dataset at {d!r}: train its generator first '
                              f'({_export_command(d)}) or set --config.synthetic_dirs')
    check_same_split(config, d, source)
  return dirs


def synthetic_examples(config):
  """The generator exports named (comma-separated) by config.synthetic_dirs, joined; each of
  the run's data.image_size."""
  size = config.data.image_size
  exports = []
  for export_dir in _export_dirs(config):
    export = synthetic.read_synthetic(export_dir)
    if export.images.shape[1:3] != (size, size):
      raise ValueError(f'{export_dir} holds {"x".join(map(str, export.images.shape[1:3]))} '
                       f'slices, this run reads {size}x{size} (data.image_size): export at that '
                       'size')
    exports.append(export)
  return examples_lib.concatenate(exports)


# The digests of the real data that split_key records with a source (beyond the settings):
# (what an older export does not record, what it then cannot be checked against, and what
# differed when it does not match).
_DATA_DIGESTS = {
    'slices': ("which slices its generator's data held",
               'files added to or removed from the data since',
               'the data held other slices (files added to or removed from it since)'),
    'groups': ('which slices were near-duplicates when its generator trained',
               'files replaced since',
               'other slices of the data were near-duplicates (a file replaced since, or the '
               'groups found before brainjax linked flipped and rotated copies), which moves '
               "slices between the grouped split's parts"),
}


def check_same_split(config, export_dir, source=None):
  """A generator trained on another split (seed, split mode, data settings, or, with the real
  `source`, other slices in the data folder) may have trained on this run's validation or
  test slices: its export would leak them into training."""
  own = split_key(config, source)
  for folder, entry in synthetic.read_manifest(export_dir)['classes'].items():
    theirs = entry.get('split_key')
    if theirs is None:  # an export of an older version, or not a generator's
      logging.warning('%s/%s does not record the split its generator trained on: it cannot be '
                      'checked against this run\'s test slices.', export_dir, folder)
      continue
    changed = reruns.config_changes(theirs, own, allowed=frozenset(_DATA_DIGESTS))
    if changed:
      raise ValueError(f'{export_dir}/{folder} comes from a generator trained on another split '
                       f'of the real data ({"; ".join(changed[:3])}): it may have seen this '
                       'run\'s test slices; export from a generator run with the same seed, '
                       'split and data settings')
    for field, (recorded, unchecked, when) in _DATA_DIGESTS.items():
      if field not in own:  # (no source read, or no grouped split)
        continue
      if field not in theirs:  # an export of an older version
        logging.warning('%s/%s does not record %s: it cannot be checked against %s.',
                        export_dir, folder, recorded, unchecked)
      elif theirs[field] != own[field]:
        raise ValueError(f'{export_dir}/{folder} comes from a generator trained when {when}: it '
                         'may have trained on this run\'s test slices; train the generators '
                         'again on this data')


def training_examples(config, real_train, label=None, source=None):
  """Real, synthetic or mixed training slices (config.train_data), optionally of one class.

  `source`: the real source real_train comes from, against whose slices the exports are
  checked (check_same_split).
  """
  parts = {'real': [real_train], 'synthetic': [], 'mixed': [real_train]}
  check_training_data(config, source)
  if config.train_data != 'real':
    synthetic_part = synthetic_examples(config)  # (the exports just checked)
    needed = (NEGATIVE, POSITIVE) if label is None else (label,)
    missing = [name for name, y in LABEL_NAMES.items()
               if y in needed and not (synthetic_part.labels == y).any()]
    if missing:
      raise ValueError(f'synthetic_dirs={config.synthetic_dirs!r} hold no {" or ".join(missing)} '
                       f'slices: export them too (configs/vae_gen.py:{missing[0]})')
    parts[config.train_data].append(synthetic_part)
  train = examples_lib.concatenate(parts[config.train_data])
  return train if label is None else train.with_label(label)


def _content(entry):
  """A manifest entry's record of the images themselves: their digest, where the export
  wrote one, so that the same images re-exported from a moved generator workdir (another
  `checkpoint` path) are the same data; an older export's whole entry."""
  if 'pixels_sha256' in entry:
    return {k: entry[k] for k in ('count', 'pixels_sha256')}
  return entry


def training_key(config, train, validation=None):
  """Digests of what a run trains on, for `loop.fit` to keep with each checkpoint: the
  training slices' ids, labels and pixels, and what the synthetic classes among them hold (a
  re-export keeps the ids); with `validation` (a classifier's), its slices too. A resumed run
  on other data (a file added, removed or replaced) would continue one model on two training
  sets, or pick its best checkpoint by two validation sets.

  Returns (key, older keys): what brainjax computed before it hashed the validation slices,
  before it hashed the pixels, and before exports recorded a digest of their images (their
  whole manifest entries), so that a run begun then resumes on the same data.
  """
  entries = []
  if config.get('train_data', 'real') != 'real':
    folders = {synthetic.FOLDERS[label] for label in np.unique(train.labels).tolist()}
    for export_dir in _export_dirs(config):
      classes = synthetic.read_manifest(export_dir)['classes']
      entries.append({f: classes[f] for f in sorted(folders & classes.keys())})
  pixels = hashlib.sha256(np.ascontiguousarray(train.images, np.float32)).hexdigest()

  def key(exports, **fields):
    text = json.dumps(dict(ids=[str(i) for i in train.ids], labels=train.labels.tolist(),
                           exports=exports, **fields), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()

  exports = [{f: _content(e) for f, e in classes.items()} for classes in entries]
  older = [{f: {k: v for k, v in e.items() if k != 'pixels_sha256'} for f, e in classes.items()}
           for classes in entries]
  keys = key(exports, pixels_sha256=pixels), key(exports), key(older)
  if validation is None:
    return keys
  validated = hashlib.sha256(np.ascontiguousarray(validation.images, np.float32)).hexdigest()
  return (key(exports, pixels_sha256=pixels, validation=slices_digest(validation),
              validation_pixels_sha256=validated),) + keys
