"""The whole study in one command: generators, synthetic exports, classifiers, anomaly rules,
a learning-free baseline, generative quality, a privacy audit and Table 1.

Every stage is an ordinary task run in its own sub-workdir; a stage whose metrics.json
exists is done and never rerun, so an interrupted study resumes at the first unfinished
stage (and that stage resumes from its own checkpoints).

Each seed repeats the whole pipeline on its own split: generators, exports, classifiers and
the generators' audit. Generators train only on their seed's training slices, so no
classifier is tested on a slice its synthetic data was derived from.
"""
import contextlib
import glob
import importlib
import json
import os
import shutil

from absl import logging
import ml_collections
import numpy as np

from brainjax.data import pipeline
from brainjax.data import synthetic
from brainjax.data.examples import NEGATIVE, POSITIVE
from brainjax.evaluation import baseline
from brainjax.evaluation import generative_quality
from brainjax.evaluation import privacy
from brainjax.evaluation import roc
from brainjax.evaluation import study_table
from brainjax.tasks import cnn_cls
from brainjax.tasks import cvae_cls
from brainjax.tasks import datasets
from brainjax.tasks import runs
from brainjax.train import parallel
from brainjax.train import reporting
from brainjax.train import reruns
from configs import cnn_cls as cnn_config
from configs import common
from configs import cvae_cls as cvae_config
from configs import gan_gen as gan_config
from configs import vae_gen as vae_config

CONFIG_MODULES = {'vae_gen': vae_config, 'gan_gen': gan_config, 'cnn_cls': cnn_config,
                  'cvae_cls': cvae_config}


def sub_config(config, task, variant, split_mode, seed):
  """The config of one stage: the task's own preset, then the study's shared settings."""
  sub = CONFIG_MODULES[task].get_config(','.join([variant] + config.preset.split(',')))
  sub.data = ml_collections.ConfigDict(config.data.to_dict())
  sub.cache_dir = config.cache_dir
  sub.split = split_mode
  sub.seed = seed
  for field in ('dedup_threshold', 'num_devices', 'half_precision', 'log_every_steps',
                'checkpoint_every_secs', 'keep_checkpoints'):
    sub[field] = config[field]
  if task.endswith('_gen'):
    sub.export.num_samples = config.num_synthetic
  sub.update_from_flattened_dict(dict(config.overrides.get(task, {})))
  return sub


# Stage fields that are paths inside the study's workdir: they change when it moves or is
# named another way (relative, absolute), so a finished or interrupted stage is still its own.
_STAGE_PATHS = frozenset({'dir', 'synthetic_dirs'})


def check_stage(sub, workdir):
  """reruns.RerunRefused if the stage in workdir ran with settings the study now gives it
  otherwise: a finished one (never rerun: its metrics would not be this config's) with any
  that decide its results, a begun one with what its own rerun refuses."""
  if os.path.exists(os.path.join(workdir, 'metrics.json')):
    changed = reruns.config_changes(reruns.read_config_json(workdir),
                                    json.loads(sub.to_json_best_effort()),
                                    reruns.RUN_FIELDS | _STAGE_PATHS)
    if changed:
      raise reruns.RerunRefused(reruns.changes_message(workdir, changed))
  elif os.path.isdir(workdir):
    reruns.check_workdir(workdir, sub, reruns.RERUN_FIELDS | _STAGE_PATHS)


def run_stage(task, sub, workdir):
  """Runs one task unless its metrics.json already exists; returns its metrics as written."""
  if os.path.exists(os.path.join(workdir, 'metrics.json')):
    try:
      check_stage(sub, workdir)
    except ValueError as error:
      raise type(error)(f'study stage {task} in {workdir}: {error}') from None
    return reporting.read_metrics_json(workdir)
  logging.info('Study stage %s -> %s', task, workdir)
  os.makedirs(workdir, exist_ok=True)
  previous = None
  first_host = parallel.is_first_host()  # (its lock and config.json stand for all hosts)
  try:
    with contextlib.ExitStack() as lock:
      if first_host:
        try:  # (as launch.py does: a folder a stage may not use gets no .lock either)
          reruns.check_workdir(workdir, sub, reruns.RERUN_FIELDS | _STAGE_PATHS)
          # Locked as launch.py locks a workdir: a launch.py pointed at the stage is refused.
          lock.enter_context(reruns.locked_workdir(workdir))
          reruns.recover_killed_rerun(workdir)
          previous = reruns.write_config(workdir, sub, reruns.RERUN_FIELDS | _STAGE_PATHS)
        except (ValueError, OSError):
          parallel.check_all_hosts_agree(refused=True)
          raise
      parallel.check_all_hosts_agree(refused=False)
      importlib.import_module(f'brainjax.tasks.{task}').train_and_evaluate(sub, workdir)
  except (ValueError, FloatingPointError) as error:  # (which stage: the fix is an overrides flag)
    # A refused rerun of a begun stage: its config.json as it was, and the study's too
    # (launch.py puts that back on a RerunRefused).
    refused = isinstance(error, reruns.RerunRefused)
    if refused and first_host:
      reruns.put_back_config(workdir, previous)
    if first_host:
      reruns.end_rerun(workdir)
    kind = (reruns.RerunRefused if refused else
            FloatingPointError if isinstance(error, FloatingPointError) else ValueError)
    raise kind(f'study stage {task} in {workdir}: {error}') from error
  if first_host:
    reruns.end_rerun(workdir)
  parallel.wait_for_all_hosts(workdir)  # later stages read what the first host wrote
  return reporting.read_metrics_json(workdir)  # as a resumed study reads it (NaN as None)


def generator_stages(config, workdir, split_mode, seed):
  """(kind, label, config, run_dir) of each generator stage of one split mode and seed."""
  for kind in config.generators.split(','):
    for label in ('positive', 'negative'):
      sub = sub_config(config, f'{kind}_gen', label, split_mode, seed)
      run_dir = os.path.join(workdir, split_mode, f'seed{seed}', 'generators', f'{kind}_{label}')
      sub.export.dir = os.path.join(run_dir, 'synthetic')
      yield kind, label, sub, run_dir


def train_generators(config, workdir, split_mode, seed):
  """One generator per (kind, class); returns {kind: {label: export_dir}}."""
  exports = {}
  for kind, label, sub, run_dir in generator_stages(config, workdir, split_mode, seed):
    run_stage(f'{kind}_gen', sub, run_dir)
    exports.setdefault(kind, {})[label] = sub.export.dir
  return exports


def classifier_stages(config, workdir, split_mode, seed, exports):
  """(task, train_data, kind, config, run_dir) of each classifier stage of one split mode and
  seed: BrainCNN and BrainCVAE on real / synthetic / mixed data for every synthetic source
  (kind: the generator whose exports it trains on; '-': none)."""
  for task in ('cnn_cls', 'cvae_cls'):
    for train_data in ('real', 'synthetic', 'mixed'):
      kinds = ['-'] if train_data == 'real' else config.synthetic_sources.split(',')
      for kind in kinds:
        sub = sub_config(config, task, train_data, split_mode, seed)
        if kind != '-':
          labels = ('positive', 'negative') if task == 'cnn_cls' else ('negative',)
          sub.synthetic_dirs = ','.join(exports[kind][label] for label in labels)
        name = f'{task}_{train_data}' + ('' if kind == '-' else f'_{kind}')
        yield task, train_data, kind, sub, os.path.join(workdir, split_mode, f'seed{seed}', name)


def train_classifiers(config, workdir, split_mode, seed, exports):
  """Runs classifier_stages; returns each one's results."""
  results = []
  for task, train_data, kind, sub, run_dir in classifier_stages(config, workdir, split_mode,
                                                                seed, exports):
    metrics = run_stage(task, sub, run_dir)
    results.append(dict(task=task, train_data=train_data, source=kind, seed=seed,
                        split=split_mode, run_dir=run_dir, metrics=metrics))
  return results


def check_stages(config, workdir):
  """Before any stage runs: check_stage of every stage this study has begun or finished. A
  study's rerun may change any setting none of them ran with (e.g. a stage's overrides after
  its loss diverged before its first checkpoint), and its seeds, split modes and audit."""
  for split_mode in config.split_modes.split(','):
    for seed in range(config.seed, config.seed + config.seeds):
      stages, exports = [], {}
      for kind, label, sub, run_dir in generator_stages(config, workdir, split_mode, seed):
        stages.append((f'{kind}_gen', sub, run_dir))
        exports.setdefault(kind, {})[label] = sub.export.dir
      stages += [(task, sub, run_dir) for task, _, _, sub, run_dir
                 in classifier_stages(config, workdir, split_mode, seed, exports)]
      for task, sub, run_dir in stages:
        try:
          check_stage(sub, run_dir)
        except ValueError as error:
          raise type(error)(f'study stage {task} in {run_dir}: {error}') from None


def real_cnn_split(config, split_mode, seed):
  """(training, test) real slices of BrainCNN's split: what the generators' audit compares
  with (and the nearest-neighbour row of a BrainCNN stage that did not record it)."""
  sub = sub_config(config, 'cnn_cls', 'real', split_mode, seed)
  source = datasets.real_source(sub)
  split = datasets.split(sub, source, 'cnn')
  return source.examples.take(split.train), source.examples.take(split.test)


def audit_generators(config, workdir, split_mode, seed, exports, feature_run, train, holdout):
  """Fréchet distance, k-NN precision/recall, tumour visibility and distance to closest record,
  against BrainCNN's training and held-out (test) real slices."""
  cnn = runs.load_run(feature_run)  # the trained real-data BrainCNN, restored once
  # (penultimate activations)
  features = lambda images: cnn_cls.features(cnn.model, cnn.variables, images)
  real = {}  # label: (training slices, holdout slices, their features), for every generator
  for label_name, label in (('positive', POSITIVE), ('negative', NEGATIVE)):
    real_train, real_holdout = train.with_label(label), holdout.with_label(label)
    real[label] = (real_train, real_holdout, features(real_train.images),
                   features(real_holdout.images))
  rows = {}
  figures_dir = os.path.join(workdir, 'results', 'figures')
  for kind, dirs in exports.items():
    for label_name, label in (('positive', POSITIVE), ('negative', NEGATIVE)):
      fake = synthetic.read_synthetic(dirs[label_name])
      real_train, real_holdout, real_f, hold_f = real[label]
      fake_f = features(fake.images)
      name = f'{split_mode}_seed{seed}_{kind}_{label_name}'
      key = f'{split_mode}/seed{seed}/{kind}_{label_name}'
      row = dict(frechet_distance=generative_quality.frechet_distance(real_f, fake_f),
                 **generative_quality.knn_precision_recall(real_f, fake_f, k=config.knn_k))
      if label == POSITIVE:
        row['tumour_visibility'] = generative_quality.tumour_visibility(
            cnn_cls.predict_log_odds(cnn.model, cnn.variables, fake.images))
      audits = {}
      for space, (s, t, h) in {'pixel': (fake.images, real_train.images, real_holdout.images),
                               'feature': (fake_f, real_f, hold_f)}.items():
        audit = audits[space] = privacy.privacy_audit(s, t, h)
        row.update({f'{space}_{k}': audit[k] for k in
                    ('median_synthetic_dcr', 'median_holdout_dcr', 'memorisation_rate')})
        row['memorisation_nominal_rate'] = audit['nominal_rate']  # (a copy-free generator's)
        if space == 'pixel' and parallel.is_first_host():
          privacy.worst_pairs_figure(fake.images, real_train.images, audit['worst_pairs'],
                                     os.path.join(figures_dir, f'closest_{name}.png'),
                                     distances=audit['worst_distances'])
      if parallel.is_first_host():
        reporting.save_image_grid(os.path.join(figures_dir, f'samples_{name}.png'),
                                  fake.images[:32])
        logging.info('Wrote %s', os.path.join(figures_dir, f'{{samples,closest}}_{name}.png'))
        # (each synthetic slice's nearest training slices: the export's paths relative to the
        # workdir, the training slices' relative to the data)
        export = os.path.relpath(dirs[label_name], workdir)
        nearest = privacy.nearest_record_rows([os.path.join(export, i) for i in fake.ids],
                                              real_train.ids, audits)
        path = os.path.join(workdir, 'results', 'privacy', f'{name}.csv')
        reporting.write_csv(path, list(nearest[0]), nearest)
        logging.info('Wrote %s', path)
      rows[key] = {k: float(v) for k, v in row.items()}
  return rows


def roc_curves_of_run(run):
  """The ROC curves of one run of train_classifiers on its real test slices, one per Table 1
  row it gives (BrainCNN's, with the nearest-neighbour row where it records it; BrainCVAE's
  selected rule), from the scores its metrics.json's ROC AUC was computed from; a row's curve
  the run cannot give is left out with a log line."""
  m = run['metrics']
  if run['task'] == 'cnn_cls':
    rows = study_table.row_keys('cnn_cls', m)
  elif m.get('selected_rule') in study_table.RULE_ROW_NAMES:
    rows = [(study_table.RULE_ROW_NAMES[m['selected_rule']], f'{m["selected_rule"]}_')]
  else:
    logging.info('ROC curves: %s left out: its metrics.json names no selected_rule',
                 run['run_dir'])
    return []
  scores = reporting.read_test_scores(run['run_dir'])
  curves = []
  for model, prefix in rows:
    if scores is None or f'{prefix}score' not in scores:
      # (a stage finished before stages wrote these test scores: reused as it is)
      logging.info('ROC curves: %s left out: it holds no %s%s', run['run_dir'],
                   reporting.TEST_SCORES, '' if scores is None else f' {prefix}score')
      continue
    if m.get(f'{prefix}auroc') is None:  # (NaN: a test set without one of the classes)
      logging.info('ROC curves: %s (%s) left out: its ROC AUC is undefined', run['run_dir'],
                   model)
      continue
    curve = roc.make_curve(f'{model}, {study_table.train_data_label(run)}', scores['label'],
                           scores[f'{prefix}score'])
    # A curve whose area is not the table's ROC AUC would contradict it (a scores file of
    # another evaluation than its metrics.json's): left out rather than drawn.
    if not np.isclose(curve.auc, m[f'{prefix}auroc'], rtol=0, atol=1e-9):
      logging.warning('ROC curves: %s (%s) left out: its %s give ROC AUC %.6f, its '
                      'metrics.json %.6f', run['run_dir'], model, reporting.TEST_SCORES,
                      curve.auc, m[f'{prefix}auroc'])
      continue
    curves.append(curve)
  return curves


def write_roc_figures(figures_dir, results):
  """roc_<split>_seed<seed>.png: the curves of that split mode and seed's classifier runs (see
  roc_curves_of_run); returns their paths."""
  groups = {}
  for run in results:
    groups.setdefault((run['split'], run['seed']), []).append(run)
  paths = []
  for (split_mode, seed), group in groups.items():
    curves = [c for run in group for c in roc_curves_of_run(run)]
    if not curves:
      continue
    paths.append(roc.save_roc_figure(
        os.path.join(figures_dir, f'roc_{split_mode}_seed{seed}.png'), curves,
        title=f'ROC on the real test slices: {split_mode} split, seed {seed}'))
  return paths


def copy_anomaly_figures(figures_dir, results):
  """Each BrainCVAE stage's reconstruction/error panels as
  anomaly_<split>_seed<seed>_<stage>.png; returns their paths."""
  paths = []
  for run in results:
    if run['task'] != 'cvae_cls':
      continue
    source = os.path.join(run['run_dir'], cvae_cls.FIGURE)
    if not os.path.isfile(source):  # (a stage without the GIAEM rule draws none)
      logging.info('Figures: %s has no %s', run['run_dir'], cvae_cls.FIGURE)
      continue
    name = f'anomaly_{run["split"]}_seed{run["seed"]}_{os.path.basename(run["run_dir"])}.png'
    os.makedirs(figures_dir, exist_ok=True)
    paths.append(shutil.copyfile(source, os.path.join(figures_dir, name)))
  return paths


def check_config(config):
  """One-line errors for settings no study can use, before any stage runs."""
  generators = config.generators.split(',')
  if set(generators) - {'vae', 'gan'} or len(set(generators)) < len(generators):
    raise ValueError(f'generators={config.generators!r}: vae and/or gan (comma-separated), '
                     'each once')
  sources = config.synthetic_sources.split(',')
  if set(sources) - set(generators) or len(set(sources)) < len(sources):
    raise ValueError(f'synthetic_sources={config.synthetic_sources!r}: generators the study '
                     f'trains (generators={config.generators!r}), each once')
  modes = config.split_modes.split(',')
  if set(modes) - {'random', 'grouped'} or len(set(modes)) < len(modes):
    raise ValueError(f'split_modes={config.split_modes!r}: random and/or grouped, each once')
  for field in ('seeds', 'knn_k'):
    if not (isinstance(config[field], int) and config[field] >= 1):
      raise ValueError(f'{field}={config[field]!r}: it must be an integer >= 1')
  if config.seed + config.seeds > 2 ** 32:  # (a stage's seed: checked for the first one only)
    last = config.seed + config.seeds - 1
    raise ValueError(f'seeds={config.seeds}: seed={config.seed} to {last} pass 2**32 - 1, the '
                     'largest seed (jax.random.PRNGKey drops the bits above: a later seed would '
                     'repeat an earlier one\'s randomness)')
  if not (isinstance(config.num_synthetic, int) and config.num_synthetic > config.knn_k):
    raise ValueError(f'num_synthetic={config.num_synthetic!r}: it must be an integer above '
                     f'knn_k={config.knn_k} (the k-NN estimate needs k + 1 samples)')
  if set(filter(None, config.preset.split(','))) - {'smoke', 'paper'}:
    raise ValueError(f"preset={config.preset!r}: '', or smoke and/or paper (comma-separated)")
  # Every stage's own settings, overrides included (a bad one would stop the study hours in).
  stages = [(f'{kind}_gen', 'positive') for kind in generators]
  subs = {task: sub_config(config, task, variant, modes[0], config.seed)
          for task, variant in stages + [('cnn_cls', 'real'), ('cvae_cls', 'real')]}
  for task, sub in subs.items():
    stage = importlib.import_module(f'brainjax.tasks.{task}')
    try:
      common.check_values(sub)
      stage.check_config(sub)
    except ValueError as error:
      raise ValueError(f'overrides.{task}: {error}') from None
  for task, sub in subs.items():  # (num_devices is every stage's: advice that fits them all)
    parallel.check_batch_split(sub, prefix=f'overrides.{task}.',
                               shared_with=[s.batch_size for s in subs.values()])
  for task in sorted({'vae_gen', 'gan_gen'} - {task for task, _ in stages}):
    try:  # a stage this study skips: its overrides' values still (a NaN rate passed unread)
      common.check_values(sub_config(config, task, 'positive', modes[0], config.seed))
    except ValueError as error:
      raise ValueError(f'overrides.{task}: {error} (a stage generators={config.generators!r} '
                       'skips)') from None
  # A synthetic-only classifier trains on the exports alone (both classes for BrainCNN, the
  # healthy one for BrainCVAE): at least one batch of them, or it would stop after the
  # generators and real-data classifiers finished, when its settings can no longer change.
  for task, exported in (('cnn_cls', 2 * config.num_synthetic), ('cvae_cls', config.num_synthetic)):
    batch = sub_config(config, task, 'synthetic', modes[0], config.seed).batch_size
    if batch > exported:
      raise ValueError(f'num_synthetic={config.num_synthetic}: {task} trained on synthetic '
                       f'slices only gets {exported}, fewer than its batch_size={batch}; '
                       f'raise num_synthetic or lower overrides.{task}.batch_size')


def check_layout(config, workdir):
  """A study begun before each seed had its own generators cannot be resumed: its later
  seeds' finished stages trained on generators that saw their test slices."""
  for split_mode in config.split_modes.split(','):
    if os.path.isdir(os.path.join(workdir, split_mode, 'generators')):
      raise ValueError(f'{workdir} holds a study whose seeds share one set of generators '
                       '(an earlier brainjax; their later seeds were tested on slices those '
                       'generators saw): run the study in a new --workdir')


def check_data(config, workdir):
  """Before any stage runs: a ValueError if a split of the data leaves a classifier a set
  without a class it needs (an empty no/ folder would stop the study once its tumour
  generators had trained), the generators' audit fewer than knn_k + 1 training slices of a
  class, or a stage fewer training slices than its batch_size (_check_batch), and
  reruns.RerunRefused if a stage of this study trained, validated
  or tested when the data held other slices (files added to or removed from its folder since):
  finished stages are reused as they are, so the table would pair rows tested on different
  slices, and a generator may have trained on the new split's test slices."""
  source = None
  for split_mode in config.split_modes.split(','):
    for seed in range(config.seed, config.seed + config.seeds):
      eval_ids = {}  # task: the slices its stages validate and test on with the data as it is
      train = {}  # task: its real training slices
      for task, protocol in (('cnn_cls', 'cnn'), ('cvae_cls', 'anomaly')):
        sub = sub_config(config, task, 'real', split_mode, seed)
        source = source or datasets.real_source(sub)  # (one data setting for every stage)
        parts = datasets.classifier_split(sub, source, protocol)
        train[task] = parts.train
        labels = source.examples.labels
        _check_batch(task, sub, len(parts.train) if task == 'cnn_cls' else
                     int((labels[parts.train] == NEGATIVE).sum()), split_mode, seed)
        if task == 'cnn_cls':  # (the generators' audit: k-NN among its training slices)
          for label, name in ((POSITIVE, 'positive'), (NEGATIVE, 'negative')):
            count = int((labels[parts.train] == label).sum())
            if count <= config.knn_k:
              raise ValueError(f'knn_k={config.knn_k}: the k-NN estimate needs more real '
                               f'training slices, {name} has {count} ({split_mode} split, '
                               f'seed {seed}); lower it')
        ids = source.examples.ids
        eval_ids[task] = reporting.eval_ids(val=ids[parts.val], test=ids[parts.test])
      for kind, label, sub, run_dir in generator_stages(config, workdir, split_mode, seed):
        _check_batch(f'{kind}_gen', sub, int(datasets.generator_training_slices(
            labels, train['cnn_cls'], train['cvae_cls'], datasets.LABEL_NAMES[label]).sum()),
                     split_mode, seed)
        if not os.path.isfile(os.path.join(sub.export.dir, 'manifest.json')):
          continue
        try:
          datasets.check_same_split(sub, sub.export.dir, source)
        except ValueError as error:
          raise reruns.RerunRefused(f'study stage {kind}_gen in {run_dir}: {error} (in a new '
                                    '--workdir)') from None
      # (what an export of a version that recorded no slices leaves unchecked)
      for task, now in eval_ids.items():
        for path in sorted(glob.glob(os.path.join(workdir, split_mode, f'seed{seed}',
                                                  f'{task}_*', 'eval_ids.json'))):
          with open(path) as f:
            if json.load(f) != now:
              raise reruns.RerunRefused(
                  f'study stage {task} in {os.path.dirname(path)} was validated and tested on '
                  'other slices than the data give now (files added to or removed from it '
                  'since): run the study on this data in a new --workdir')


def _check_batch(task, sub, num_training_slices, split_mode, seed):
  """A ValueError if a stage's batch_size exceeds its real training slices (BrainCVAE's: the
  healthy ones), as the stage itself would say once the stages before it had trained."""
  try:
    pipeline.steps_per_epoch(num_training_slices, sub.batch_size)
  except ValueError as error:
    raise ValueError(f'study stage {task} ({split_mode} split, seed {seed}): {error}') from None


def train_and_evaluate(config, workdir):
  check_config(config)
  check_layout(config, workdir)
  check_stages(config, workdir)
  check_data(config, workdir)
  if parallel.is_first_host():  # until this run writes its own, they describe an older one
    reporting.remove_metrics_json(workdir)
    for path in glob.glob(os.path.join(workdir, 'results', 'table1.*')):
      os.remove(path)
    # (every run redraws its seeds' and split modes' figures: those of dropped ones would stay)
    for folder in ('figures', 'privacy'):
      shutil.rmtree(os.path.join(workdir, 'results', folder), ignore_errors=True)
  results, quality = [], {}
  for split_mode in config.split_modes.split(','):
    for seed in range(config.seed, config.seed + config.seeds):
      exports = train_generators(config, workdir, split_mode, seed)
      classifier_runs = train_classifiers(config, workdir, split_mode, seed, exports)
      train, holdout = real_cnn_split(config, split_mode, seed)
      cnn_real = next(r for r in classifier_runs
                      if r['task'] == 'cnn_cls' and r['train_data'] == 'real')
      if not baseline.recorded(cnn_real['metrics']):
        # (a stage finished before BrainCNN runs recorded Table 1's nearest-neighbour row)
        cnn_real['metrics'].update(
            baseline.prefixed(baseline.nearest_neighbour_metrics(train, holdout)))
      results += classifier_runs
      quality.update(audit_generators(config, workdir, split_mode, seed, exports,
                                      cnn_real['run_dir'], train, holdout))
  if not parallel.is_first_host():  # the first host writes the tables
    return study_table.flat_summary(results, quality)
  out_dir = os.path.join(workdir, 'results')
  figures_dir = os.path.join(out_dir, 'figures')
  paths = study_table.write_tables(out_dir, results, quality)
  paths += write_roc_figures(figures_dir, results) + copy_anomaly_figures(figures_dir, results)
  for path in paths:
    logging.info('Wrote %s', path)
  with open(paths[0]) as f:
    print(f.read())  # (Table 1 on stdout, as each classifier prints its own row)
  summary = study_table.flat_summary(results, quality)
  reporting.write_metrics_json(workdir, summary)
  return summary
