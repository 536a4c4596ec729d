"""Config strings, overrides and launch.py's one-line errors."""
import fcntl
import importlib
import logging
import os
import pathlib
import re
import subprocess
import sys
import time
import types

import jax
import pytest

from brainjax import threads
from brainjax.tasks import cnn_cls
from brainjax.tasks import cvae_cls
from brainjax.train import reruns
from brainjax.train import run_setup
from configs import cnn_cls as cnn_config
from configs import common
from configs import predict as predict_config

REPO = pathlib.Path(__file__).resolve().parents[1]

CONFIGS = ('vae_gen', 'gan_gen', 'cnn_cls', 'cvae_cls', 'study', 'predict')


def test_parse_arg_variants_and_modifiers():
  opts = common.parse_arg('negative,smoke', variants=('positive', 'negative'))
  assert (opts.variant, opts.smoke) == ('negative', True)
  assert common.parse_arg('', variants=('positive', 'negative')).variant == 'positive'


@pytest.mark.parametrize('arg, message', [
    ('postive', 'unknown config word'),
    ('positive,negative', 'choose one variant'),
    ('seed=1', '--config.<field>=<value>'),
])
def test_parse_arg_rejects(arg, message):
  with pytest.raises(ValueError, match=message):
    common.parse_arg(arg, variants=('positive', 'negative'))


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_has_a_smoke_variant(name):
  config = importlib.import_module(f'configs.{name}').get_config('smoke')
  assert config.task == name
  assert config.name.endswith('smoke')
  assert config.data.num_per_class <= 32


def _launch(*args):
  return subprocess.run([sys.executable, 'launch.py', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120)


# A refused setting is one line, before anything is written: no workdir is left behind to
# refuse the corrected rerun as "a run with other settings". (args, what the error says)
REFUSED = [
    (['--config=configs/vae_gen.py:positive,smoke', '--config.num_epochs=two'],
     'num_epochs'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.no_such_field=1'],
     'no_such_field'),
    (['--config=configs/nope.py'], 'no config file /'),  # (absolute: the folder it looked in)
    (['--config=configs/vae_gen.py:positive,smoke', '--config.num_epoch=1'],
     'unknown config field \'num_epoch\'; did you mean "num_epochs"'),
    (['--config=configs/gan_gen.py:negative,smoke', '--config.discriminator.widths=(4,4,4,4,4,4,4,4)'],
     'Discriminator: image_size 128 is too small for 8 stride-2 convs'),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.model.conv_widths=(4, True)'],
     'model.conv_widths=(4, True): network sizes must be integers >= 1'),
    (['--config=configs/predict.py:smoke', '--config.num_devices=99'], 'num_devices=99'),
    (['--config=configs/study.py:quick,smoke', '--config.overrides.gan_gen.learning_rate=nan'],
     "overrides.gan_gen: learning_rate=nan: it must be a finite number > 0 (a stage "
     "generators='vae' skips)"),
    (['--config=configs/vae_gen.py:sideways'],
     "error: unknown config word 'sideways'"),  # (not 'error: ValueError: ...')
    (['--config=configs/common.py'], 'the config file defines no get_config()'),
    (['--config=README.md'], 'the config file failed: SyntaxError'),  # (or a run's config.json)
    (['--config=configs/predict.py', '--config.model_dir=no/such/run', '--config.input=configs'],
     "'no/such/run' does not exist: give the --workdir of a brainjax run"),
    (['--config=configs/predict.py', '--config.model_dir=configs', '--config.input=configs'],
     "'configs' has no config.json: not the workdir of a brainjax run"),
    (['--config=configs/predict.py', '--config.model_dir=configs'], 'no input given'),
    (['--config=configs/predict.py:smoke', '--config.num_threads=-3'], 'num_threads=-3'),
    (['--config=configs/predict.py:smoke', '--config.data.num_per_class=0'],
     'data.num_per_class=0: smoke mode draws'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.task=cnn_cls'],
     '--config.task cannot be changed'),
    # (a whole group replaced: a traceback where the code read a lost field, or, for model, a
    # network silently at its built-in sizes)
    (['--config=configs/cnn_cls.py:real,smoke', "--config.data={'dataset': 'phantom'}"],
     '--config.data={...} would replace every field of data: set them one at a time'),
    (['--config=configs/cnn_cls.py:real,smoke', "--config.model={'conv_widths': (4,)}"],
     '--config.model={...} would replace every field of model'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.multihost=True'],
     'Set JAX_COORDINATOR_ADDRESS'),
    (['--config=configs/predict.py:smoke', '--config.multihost=True'], 'predict runs on one host'),
    # (the study's stages share num_devices: it advised 6, which another stage's batch of 8
    # then refused)
    (['--config=configs/study.py:quick,smoke', '--config.overrides.cvae_cls.batch_size=12'],
     'overrides.cvae_cls.batch_size=12 does not split across 8 devices: set num_devices to one '
     'of [1, 2, 4]'),
    # (a 60 TiB allocation's traceback, once the model and inputs had loaded)
    (['--config=configs/predict.py:smoke', '--config.batch_size=1000000000'],
     'batch_size=1000000000 slices of'),
    # (smoke mode drew its phantom inputs after training: seed=-1 in the error, named no field)
    (['--config=configs/predict.py:smoke', '--config.data.seed=-2'], 'data.seed=-2'),
    # (every DBSCAN eps under a 32 px slice's pixel step: a constant rule, a 50% ROC AUC row)
    (['--config=configs/cvae_cls.py:real,smoke', '--config.data.image_size=32'],
     'anomaly.dbscan_eps=(0.015, 0.025) are all under one pixel step, 1/32 at data.image_size=32: '
     'no pixel would have a neighbour, no cluster grow past one pixel; add an eps of at least '
     '0.03125'),
    # (the trained run's own preprocessing applies: this was taken, and did nothing)
    (['--config=configs/predict.py:smoke', '--config.data.image_size=64'],
     "unknown config field 'image_size'"),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.batch_size=0'], 'batch_size=0'),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.keep_checkpoints=0'],
     'keep_checkpoints=0'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.export.num_samples=0'],
     'export.num_samples=0'),
    (['--config=configs/gan_gen.py:positive,smoke', '--config.export.num_samples=1000000000000'],
     'export.num_samples=1000000000000 slices of 128x128 need'),  # (the memory, after training)
    (['--config=configs/study.py:quick,smoke', '--config.generators=vea'], "generators='vea'"),
    (['--config=configs/study.py:quick,smoke', '--config.synthetic_sources=gan'],
     "synthetic_sources='gan'"),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.learning_rate=-1'],
     'learning_rate=-1.0: it must be a finite number > 0'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.model.latent_dim=0'],
     'model.latent_dim=0: network sizes must be integers >= 1'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.model.latent_dim=1000000000000'],
     'the network sizes give a training state that would need'),  # (an OOM, after the data)
    (['--config=configs/study.py:quick,smoke', '--config.overrides.cnn_cls.num_epochs=1',
      '--config.seeds=0'], 'seeds=0'),
    (['--config=configs/study.py:quick,smoke', '--config.overrides.cnn.num_epochs=1'],
     "unknown config field 'cnn'"),
    (['--config=configs/study.py:paper', '--config.overrides.gan_gen.num_epochs=1',
      '--config.data.dataset=phantom', '--config.seeds=0'], 'seeds=0'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.data.image_size=100'],
     'image_size 100 is not a multiple of 2**6'),
    (['--config=configs/cvae_cls.py:real,smoke', '--config.anomaly.selection_metric=nope'],
     'anomaly.selection_metric'),
    (['--config=configs/cnn_cls.py:synthetic,smoke', '--config.synthetic_dirs=no/such/export'],
     "no synthetic dataset at 'no/such/export'"),
    (['--config=configs/cvae_cls.py:mixed,smoke', '--config.synthetic_dirs=no/such/export'],
     "no synthetic dataset at 'no/such/export': train its generator first (a generator run "
     'with --config.export.dir=no/such/export)'),
    # (the hint named the full-size run, whose export is another folder)
    (['--config=configs/cvae_cls.py:mixed,smoke',
      '--config.synthetic_dirs=no/runs/vae_gen_negative_smoke/synthetic'],
     'first (python launch.py --config=configs/vae_gen.py:negative,smoke)'),
    # (it trained and tested on the phantom, reported as real, config.json naming the folder)
    (['--config=configs/cnn_cls.py:real,smoke', '--config.data.data_dir=configs'],
     "/configs' is set, but data.dataset is phantom, which reads no folder"),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.data.dataset=br35h',
      '--config.data.data_dir=no/such/br35h'], 'such/br35h does not exist'),
    (['--config=configs/vae_gen.py:negative,smoke', '--config.data.dataset=folder',
      '--config.data.data_dir=no/such/folder'], 'such/folder does not exist'),
    (['--config=configs/gan_gen.py:positive,smoke', '--config.data.dataset=br35h',
      '--config.data.data_dir=configs'], 'holds neither yes/ and no/ folders'),
    (['--config=configs/cvae_cls.py:real,smoke', '--config.data.dataset=folder',
      '--config.data.data_dir=configs'], 'has no yes/ or no/ folder'),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.data.dataset=synthetic',
      '--config.data.data_dir=configs'], "unknown data.dataset 'synthetic'"),
    (['--config=configs/study.py:quick,smoke', '--config.data.dataset=folder'],
     'data.data_dir must point at the folder data'),
    (['--config=configs/study.py:quick,smoke', '--config.synthetic_sources=vae,vae'],
     "synthetic_sources='vae,vae'"),
    (['--config=configs/study.py:quick,smoke', '--config.num_synthetic=0'], 'num_synthetic=0'),
    (['--config=configs/study.py:quick,smoke', '--config.seed=4294967295', '--config.seeds=2'],
     'seeds=2: seed=4294967295 to 4294967296 pass 2**32 - 1'),
    (['--config=configs/study.py:quick,smoke', '--config.knn_k=16'], 'num_synthetic=16'),
    (['--config=configs/study.py:quick,smoke', '--config.num_synthetic=4'],
     'cvae_cls trained on synthetic slices only gets 4, fewer than its batch_size=8'),
    (['--config=configs/study.py:quick,smoke', '--config.num_epochs=3'], 'num_epochs'),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.data.image_size=100'],
     'BrainCNN: image size 100x100 is not a multiple of 8'),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.num_epochs=0'], 'num_epochs=0'),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.data.image_size=0'],
     'data.image_size must be >= 8, got 0'),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.split=foo'],
     "split='foo': it must be 'random' or 'grouped'"),
    (['--config=configs/gan_gen.py:positive,smoke', '--config.mode=sample'], "mode='sample'"),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.label=tumour'], "label='tumour'"),
    (['--config=configs/gan_gen.py:negative,smoke', '--config.export.seed=4294967296'],
     'export.seed=4294967296: it must be an integer in [0, 2**32)'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.export.seed=-1'],
     'export.seed=-1'),
    # (found once the model had trained)
    (['--config=configs/vae_gen.py:positive,smoke', '--config.export.dir=README.md/synthetic'],
     f"cannot use export.dir 'README.md/synthetic': {REPO / 'README.md'} is a file"),
    # (absl loads the last, which the checks here did not see: a file without get_config() ran
    # the first one's default variant)
    (['--config=configs/cnn_cls.py:real,smoke', '--config=configs/common.py'],
     '--config is given 2 times: give one'),
    (['--config=configs/cnn_cls.py:real,smoke', '-config', 'configs/cvae_cls.py:real,smoke'],
     '--config is given 2 times: give one'),  # (absl's one-dash form)
]


_REFUSED_TEST = 'test_a_refused_setting_is_one_line_and_leaves_no_workdir'


@pytest.fixture(scope='module')
def refused_run(request, tmp_path_factory):
  """refused_run(index): launch.py's result for a case of REFUSED, and the workdir it was given.

  At the first call, every case this session selected runs, side by side, one per core (each
  is mostly a Python process importing its libraries); a pytest-xdist worker, which gets its
  share of the cases one by one, runs each when asked.
  """
  root = tmp_path_factory.mktemp('refused')
  results = {}

  def refuse(index):
    workdir = root / str(index) / 'run'
    try:
      return _launch(*REFUSED[index][0], f'--workdir={workdir}'), workdir
    except subprocess.TimeoutExpired as error:  # (that case's failure, not every case's)
      return error, workdir

  def result(index):
    if index not in results:
      together = [index] if 'PYTEST_XDIST_WORKER' in os.environ else sorted({index} | {
          item.callspec.params['index'] for item in request.session.items
          if getattr(item, 'originalname', '') == _REFUSED_TEST})
      results.update(zip(together, threads.thread_map(refuse, together)))
    return results[index]

  return result


@pytest.mark.parametrize('index', range(len(REFUSED)), ids=[message for _, message in REFUSED])
def test_a_refused_setting_is_one_line_and_leaves_no_workdir(index, refused_run):
  result, workdir = refused_run(index)
  assert isinstance(result, subprocess.CompletedProcess), result
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]  # (log lines of the run before it may precede)
  assert last.startswith('error: ') and REFUSED[index][1] in last, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


@pytest.mark.parametrize('variant', ['quick', 'paper'])
def test_a_study_s_stage_overrides_restate_the_stage_config_s_own_settings(variant):
  # They are written out so that a flag can change them (a case of
  # test_a_refused_setting_is_one_line_and_leaves_no_workdir for each variant); they must
  # not drift from the stages' own configs.
  from brainjax.tasks import study as study_task
  from configs import study
  config = study.get_config(variant)
  for task, module in study_task.CONFIG_MODULES.items():
    stage_variant = 'real' if task.endswith('_cls') else 'positive'
    sub = study_task.sub_config(config, task, stage_variant, 'random', 0)
    own = module.get_config(f'{stage_variant},paper' if variant == 'paper' else stage_variant)
    for field in config.overrides[task]:
      if not (variant == 'quick' and task.endswith('_gen') and field == 'num_epochs'):
        assert sub[field] == own[field], (task, field)  # (quick trains its generators less)


def test_an_empty_workdir_flag_or_run_name_is_refused_not_taken_as_the_default(tmp_path):
  # (--workdir=$DIR with DIR unset: it ran, or resumed, in runs/<config name> of the cwd)
  result = subprocess.run([sys.executable, str(REPO / 'launch.py'),
                           f'--config={REPO}/configs/cnn_cls.py:real,smoke', '--workdir='],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().endswith('--workdir is empty: name a folder, or leave the flag '
                                        'out for runs/cnn_cls_real_smoke')
  assert not (tmp_path / 'runs').exists()
  # Nor is a run name whose default workdir was runs/ itself (it trained there), or outside it.
  for name in ('', '.', 'a/..', '../elsewhere', '/tmp'):
    result = subprocess.run([sys.executable, str(REPO / 'launch.py'),
                             f'--config={REPO}/configs/cnn_cls.py:real,smoke',
                             f'--config.name={name}'],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert result.stderr.strip().endswith(f'--config.name={name!r} names no folder inside runs/: '
                                          'name the run, or give --workdir')
    assert not (tmp_path / 'runs').exists()


def test_an_export_folder_holding_the_workdir_or_its_files_is_refused_before_training(tmp_path):
  # (the export refused the run's own files there once the generator had trained)
  run = tmp_path / 'run'
  for export in (run / 'checkpoints', run / 'samples' / 'x', run, tmp_path):
    result = _launch('--config=configs/vae_gen.py:positive,smoke', f'--workdir={run}',
                     f'--config.export.dir={export}')
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert f'export.dir {export} holds --workdir {run} or its run\'s files' in result.stderr
    assert not run.exists()
  # A folder of its own inside the workdir is one (e.g. a second export by mode=generate).
  from brainjax.train import run_setup  # pylint: disable=g-import-not-at-top
  config = importlib.import_module('configs.vae_gen').get_config('positive,smoke')
  for export in (run / 'synthetic', run / 'synthetic_2'):
    config.export.dir = str(export)
    assert run_setup.resolve_paths(config, str(run)) == str(run)


def test_a_file_where_the_workdir_would_be_is_a_short_error(tmp_path):
  (tmp_path / 'file').write_text('mine')
  result = _launch('--config=configs/cnn_cls.py:real,smoke', f'--workdir={tmp_path / "file"}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert "is a file, not a folder" in result.stderr
  assert (tmp_path / 'file').read_text() == 'mine'
  (tmp_path / 'gone').symlink_to(tmp_path / 'missing')
  result = _launch('--config=configs/cnn_cls.py:real,smoke', f'--workdir={tmp_path / "gone"}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().endswith("gone' is a link to nothing")


@pytest.mark.parametrize('field, value, message', [
    ('seed', 2 ** 40, 'seed='),
    ('b1', 1.0, r'b1=1.0: it must be in \[0, 1\)'),
    ('plateau_factor', -1.0, 'plateau_factor'),
    ('plateau_patience', -3, 'plateau_patience'),
    ('learning_rate', float('nan'), 'learning_rate=nan'),
    ('model.dropout_rate', 2.0, r'model.dropout_rate=2.0: it must be in \[0, 1\)'),
    ('model.dense_widths', (16, 0, 8), 'model.dense_widths'),
    ('dedup_threshold', 1.5, r'dedup_threshold=1.5: it must be a correlation in \[-1, 1\)'),
    ('dedup_threshold', float('nan'), 'dedup_threshold=nan'),
    # at the ranges' open ends: a rate of 0 at the first plateau, Adam dividing by 1 - b2**t =
    # 0, every activation dropped, a KL term rewarded
    ('plateau_factor', 0.0, r'plateau_factor=0.0: it must be in \(0, 1\]'),
    ('b2', 1.0, r'b2=1.0: it must be in \[0, 1\)'),
    ('model.dropout_rate', 1.0, r'model.dropout_rate=1.0: it must be in \[0, 1\)'),
    ('vae_gen:kl_weight', -1.0, 'kl_weight=-1.0: it must be a finite number >= 0'),
    # just outside the other ends of the ranges
    ('seed', 2 ** 32, r'seed=4294967296: it must be an integer in \[0, 2\*\*32\)'),
    ('learning_rate', 0.0, 'learning_rate=0.0: it must be a finite number > 0'),
    ('keep_checkpoints', 0, 'keep_checkpoints=0: it must be an integer >= 1'),
    ('log_every_steps', 0, 'log_every_steps=0: it must be an integer >= 1'),
    ('checkpoint_every_secs', float('inf'), 'checkpoint_every_secs=inf'),
    ('plateau_factor', 1.5, r'plateau_factor=1.5: it must be in \(0, 1\]'),
    ('num_epochs', True, 'num_epochs=True: it must be an integer >= 1'),
    ('model.dropout_rate', -0.1, r'model.dropout_rate=-0.1: it must be in \[0, 1\)'),
    ('model.conv_widths', (), r'model.conv_widths=\(\): network sizes must be integers >= 1'),
    ('vae_gen:weight_decay', -1e-5, 'weight_decay=-1e-05: it must be a finite number >= 0'),
    ('vae_gen:export.seed', 2 ** 32,
     r'export.seed=4294967296: it must be an integer in \[0, 2\*\*32\)'),
])
def test_values_no_run_can_use_are_refused(field, value, message):
  task, _, field = field.rpartition(':')
  variant = 'positive,smoke' if task == 'vae_gen' else 'real,smoke'
  config = importlib.import_module(f'configs.{task or "cnn_cls"}').get_config(variant)
  common.check_values(config)
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=message):
    common.check_values(config)


def test_a_network_width_below_one_is_refused():
  from configs import gan_gen
  gan = gan_gen.get_config('positive,smoke')
  common.check_values(gan)
  gan.generator.widths = (8, -4, 4, 4)
  with pytest.raises(ValueError, match='generator.widths'):
    common.check_values(gan)


@pytest.mark.parametrize('field, value, message', [
    ('data.image_size', 0, 'data.image_size must be >= 8'),
    ('data.margin', 0.6, r'data.margin must be in \[0, 0.5\)'),
    ('data.num_per_class', -1, 'data.num_per_class must be >= 0'),
    ('data.seed', -1, r'data.seed must be an integer in \[0, 2\*\*32\)'),
    ('data.num_per_class', 10 ** 12, '2000000000000 slices of data.image_size=128 need'),
    ('data.image_size', 2 ** 20, '48 slices of data.image_size=1048576 need'),
])
def test_data_settings_no_source_can_read_are_refused_before_any_file_is_read(field, value,
                                                                             message):
  from brainjax.data import sources
  from configs import cnn_cls
  config = cnn_cls.get_config('real,smoke')
  sources.check_location(config.data)
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=message):
    sources.check_location(config.data)


def test_num_per_class_caps_a_folder_s_slices_it_does_not_count_them(tmp_path):
  # (a cap of a million slices per class was refused as "122 GiB" for a folder of two)
  from brainjax.data import sources
  from configs import cnn_cls
  (tmp_path / 'yes').mkdir()
  config = cnn_cls.get_config('real,smoke')
  config.data.dataset, config.data.data_dir = 'folder', str(tmp_path)
  config.data.num_per_class = 10 ** 6
  sources.check_location(config.data)


def test_a_folder_beside_the_data_with_its_name_as_prefix_is_not_inside_it(tmp_path):
  from brainjax.data import layout
  (tmp_path / 'data' / 'yes').mkdir(parents=True)
  (tmp_path / 'data2').mkdir()
  assert not layout.is_inside(str(tmp_path / 'data2'), str(tmp_path / 'data'))
  assert layout.is_inside(str(tmp_path / 'data' / 'yes'), str(tmp_path / 'data'))
  assert layout.is_inside(str(tmp_path / 'data'), str(tmp_path / 'data'))


def test_a_run_with_only_a_best_checkpoint_has_begun_and_one_without_results_is_touched(
    tmp_path):
  # Killed between its first best/ and its first checkpoints/ commit, a run has trained: a
  # rerun with other settings is refused. And a workdir without metrics.json holds no results
  # that a failed rerun could have left untouched (its replaced config.json stays replaced).
  from configs import cnn_cls
  from brainjax.train import reruns
  config = cnn_cls.get_config('real,smoke')
  reruns.write_config(str(tmp_path), config)
  (tmp_path / 'best' / '40').mkdir(parents=True)
  config.learning_rate *= 10
  with pytest.raises(reruns.RerunRefused, match='learning_rate'):
    reruns.check_workdir(str(tmp_path), config)
  assert not reruns.untouched_since(str(tmp_path), time.time() + 10)
  (tmp_path / 'metrics.json').write_text('{}')
  assert reruns.untouched_since(str(tmp_path), time.time() + 10)


def test_a_study_s_one_seed_may_be_the_largest():
  from brainjax.tasks import study
  from configs import study as study_config
  config = study_config.get_config('quick,smoke')
  config.seed, config.seeds = 2 ** 32 - 1, 1
  study.check_config(config)


def test_a_workdir_is_new_empty_or_the_same_run_s(tmp_path):
  from configs import cnn_cls
  from brainjax.train import reruns
  config = cnn_cls.get_config('real,smoke')
  reruns.write_config(str(tmp_path), config)
  config.data.num_per_class = 3  # config.json alone: the run stopped before it began
  reruns.write_config(str(tmp_path), config)
  (tmp_path / 'checkpoints' / '3.orbax-checkpoint-tmp-1').mkdir(parents=True)  # a killed save
  (tmp_path / 'tensorboard').mkdir()
  config.learning_rate = 0.5  # no checkpoint yet: it has not trained, any setting may change
  reruns.write_config(str(tmp_path), config)
  config.learning_rate = 1e-4
  reruns.write_config(str(tmp_path), config)
  (tmp_path / 'checkpoints' / '2').mkdir()  # a committed checkpoint: now it has begun
  config.num_epochs, config.log_every_steps = 5, 1  # how long and how: a resume may change
  reruns.write_config(str(tmp_path), config)
  config.learning_rate = 0.5  # what it learns: not in the same checkpoint
  with pytest.raises(ValueError, match=r'learning_rate: 0.0001 -> 0.5'):
    reruns.write_config(str(tmp_path), config)
  from configs import predict
  with pytest.raises(ValueError, match='holds a cnn_cls run'):  # e.g. predict into its model
    reruns.write_config(str(tmp_path), predict.get_config('smoke'))
  (tmp_path / 'scans').mkdir()
  (tmp_path / 'scans' / 'a.png').write_bytes(b'')
  with pytest.raises(ValueError, match='not a brainjax workdir'):  # e.g. predict into its input
    reruns.write_config(str(tmp_path / 'scans'), predict.get_config('smoke'))
  assert sorted(p.name for p in (tmp_path / 'scans').iterdir()) == ['a.png']


def test_a_rerun_killed_before_it_changed_the_results_leaves_their_config(tmp_path):
  # A kill skips the put-back of a rerun stopped before it changed the results: its
  # config.json (num_latent_samples=5) described maps made with 1, and predict rebuilt the run
  # with it. Readers take the replaced config while the results are untouched; the next run
  # there puts it back.
  from brainjax.train import reruns
  from configs import cvae_cls
  workdir = str(tmp_path)
  config = cvae_cls.get_config('real,smoke')
  reruns.write_config(workdir, config)
  for name in ('metrics.json', 'global_kmeans_centroids.npy'):
    (tmp_path / name).write_text('{}')
  hour_ago = time.time() - 3600
  for path in tmp_path.iterdir():
    os.utime(path, (hour_ago, hour_ago))
  original = (tmp_path / 'config.json').read_text()
  rerun = cvae_cls.get_config('real,smoke')
  rerun.anomaly.num_latent_samples = 5  # a change a rerun may make
  reruns.write_config(workdir, rerun)  # ... and killed here: no end_rerun
  assert reruns.read_config_json(workdir)['anomaly']['num_latent_samples'] == 1
  reruns.recover_killed_rerun(workdir)
  assert (tmp_path / 'config.json').read_text() == original
  assert not (tmp_path / reruns.PREVIOUS_CONFIG).exists()
  reruns.write_config(workdir, rerun)  # killed once it had changed a result: its config stays
  (tmp_path / 'metrics.json').write_text('{"new": 1}')
  assert reruns.read_config_json(workdir)['anomaly']['num_latent_samples'] == 5
  reruns.recover_killed_rerun(workdir)
  assert reruns.load_config(workdir).anomaly.num_latent_samples == 5
  assert not (tmp_path / reruns.PREVIOUS_CONFIG).exists()


def test_a_workdir_left_with_only_a_half_written_config_json_starts_the_run(tmp_path):
  # A first launch killed while writing config.json: its rerun was refused ("holds
  # config.json.tmp but no config.json: not a brainjax workdir").
  from brainjax.train import reruns
  from configs import cnn_cls
  (tmp_path / 'config.json.tmp').write_text('{"task": "cnn_')
  assert reruns.write_config(str(tmp_path), cnn_cls.get_config('real,smoke')) is None
  assert sorted(os.listdir(tmp_path)) == ['config.json']
  # Likewise a half-written file of a run killed before its first checkpoint: it has not
  # begun, so its rerun may change any setting.
  (tmp_path / 'eval_ids.json.tmp').write_text('{"val": [')
  other = cnn_cls.get_config('real,smoke')
  other.learning_rate /= 10
  assert reruns.write_config(str(tmp_path), other) is not None


def test_a_cache_folder_inside_the_workdir_is_no_part_of_the_run(tmp_path):
  # A run stopped before its first checkpoint may be rerun with other settings; its cache
  # folder, set inside the workdir, made it count as begun ("holds a run with other settings").
  run = tmp_path / 'run'
  args = ['--config=configs/cnn_cls.py:real,smoke', f'--workdir={run}',
          f'--config.cache_dir={run / "cache"}', '--config.num_epochs=1']
  result = _launch(*args, '--config.learning_rate=1e30')
  assert result.returncode != 0 and 'No checkpoint had been saved yet' in result.stderr
  assert (run / 'cache').is_dir()
  result = _launch(*args)
  assert result.returncode == 0, result.stderr[-2000:]


_INTERRUPTED_RUN = """
import sys
from absl import app
import launch
from brainjax.tasks import vae_gen
from brainjax.train import run_setup
def interrupted_while_checking(config, task):
  raise KeyboardInterrupt
if '--early' in sys.argv:  # (while the run is set up)
  run_setup.check_settings = interrupted_while_checking
def interrupted(config, workdir):
  if config.export.num_samples == 7:  # (the run had written new results)
    open(workdir + '/metrics.json', 'w').write('{"new": 1}')
  raise KeyboardInterrupt
vae_gen.train_and_evaluate = interrupted
sys.argv = ['launch.py', '--config=configs/vae_gen.py:positive,smoke', '--workdir=' + sys.argv[1],
            *[arg for arg in sys.argv[2:] if arg != '--early']]
app.run(launch.main, flags_parser=launch.parse_flags)
"""


def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path):
  interrupted = lambda *args: subprocess.run(
      [sys.executable, '-c', _INTERRUPTED_RUN, str(tmp_path / 'run'), *args], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  result = interrupted()
  assert result.returncode == 130
  assert 'Traceback' not in result.stderr
  assert f'Interrupted: the same command goes on with {tmp_path / "run"}' in result.stderr
  # A rerun stopped before it touched the run's results leaves their config.json.
  (tmp_path / 'run' / 'metrics.json').write_text('{}')
  config = (tmp_path / 'run' / 'config.json').read_text()
  assert interrupted('--config.log_every_steps=3').returncode == 130
  assert (tmp_path / 'run' / 'config.json').read_text() == config
  # ... and one stopped after it wrote new results keeps the config.json that made them.
  assert interrupted('--config.export.num_samples=7').returncode == 130
  assert '"num_samples": 7' in (tmp_path / 'run' / 'config.json').read_text()


def test_ctrl_c_before_the_run_starts_is_one_line(tmp_path):
  result = subprocess.run([sys.executable, '-c', _INTERRUPTED_RUN, str(tmp_path / 'run'),
                           '--early'], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 130
  assert 'Traceback' not in result.stderr
  assert result.stderr.splitlines()[-1] == 'Interrupted before the run started.'
  assert not (tmp_path / 'run').exists()


# launch.py run as a script, with a Ctrl-C pressed as it starts to import a module (argv[2]),
# in an import that drops what it raises (as an optional import drops the ImportError that an
# extension module's initialisation makes of a KeyboardInterrupt).
_CTRL_C_DURING_IMPORTS = """
import os, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in a terminal's foreground)
module = sys.argv[2]
class PressCtrlC:
  def find_spec(self, name, path=None, target=None):
    if name == module:
      sys.meta_path.remove(self)
      try:
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(10))  # (Python raises a KeyboardInterrupt at a call)
      except BaseException:
        pass
sys.meta_path.insert(0, PressCtrlC())
sys.argv = ['launch.py', '--config=configs/vae_gen.py:positive,smoke', '--workdir=' + sys.argv[1]]
runpy.run_path('launch.py', run_name='__main__')
"""


@pytest.mark.parametrize('module', ['jax', 'brainjax.tasks.vae_gen'])
def test_ctrl_c_during_the_imports_is_held_until_the_run_can_say_so(tmp_path, module):
  # (Raised in such an import, it was lost, and the run went on.)
  result = subprocess.run(
      [sys.executable, '-c', _CTRL_C_DURING_IMPORTS, str(tmp_path / 'run'), module],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 130, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == ['Interrupted before the run started.']
  assert not (tmp_path / 'run').exists()


def test_a_config_file_whose_code_fails_is_not_called_an_unknown_field(tmp_path):
  (tmp_path / 'slip.py').write_text('from configs import common\n'
                                    'def get_config(arg=None):\n'
                                    '  return common.get_config(arg)\n')
  result = _launch(f'--config={tmp_path / "slip.py"}', f'--workdir={tmp_path / "run"}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert "the config file failed: module 'configs.common' has no attribute" in result.stderr
  assert not (tmp_path / 'run').exists()
  (tmp_path / 'slip.py').write_text("def get_config(arg=None):\n  return {}['learning']\n")
  result = _launch(f'--config={tmp_path / "slip.py"}', f'--workdir={tmp_path / "run"}')
  assert 'error: the config file failed: learning' in result.stderr  # (a KeyError in it)


def test_a_workdir_in_use_by_another_run_is_refused_before_anything_is_written(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  with open(workdir / '.lock', 'w') as held:
    fcntl.flock(held, fcntl.LOCK_EX)  # as a running launch.py holds it
    held.write('12345')
    held.flush()
    result = _launch('--config=configs/cnn_cls.py:real,smoke', f'--workdir={workdir}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: {workdir} is in use by another run (process 12345): wait for it to end, or '
      'choose another --workdir')
  assert os.listdir(workdir) == ['.lock']


def test_paths_are_taken_as_the_user_means_them(tmp_path, monkeypatch):
  from brainjax.train import run_setup  # pylint: disable=g-import-not-at-top
  from brainjax.train import reruns  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'data' / 'yes').mkdir(parents=True)
  config = importlib.import_module('configs.cnn_cls').get_config('real,smoke')
  config.cache_dir, config.data.dataset, config.data.data_dir = '~/cache', 'folder', 'data/'
  # `~` expanded (a shell leaves --workdir=~/x as it is); the data folder absolute.
  assert run_setup.resolve_paths(config, '~/run') == str(tmp_path / 'home' / 'run')
  assert config.cache_dir == str(tmp_path / 'home' / 'cache')
  assert config.data.data_dir == str(tmp_path / 'data')
  # Nothing written into the user's data.
  for workdir in ('data', 'data/yes/run', str(tmp_path / 'data' / 'run')):
    with pytest.raises(ValueError, match=r'--workdir .* is inside the data folder'):
      run_setup.resolve_paths(config, workdir)
  config.cache_dir = 'data/cache'
  with pytest.raises(ValueError, match=r'cache_dir .* is inside the data folder'):
    run_setup.resolve_paths(config, 'run')
  config.cache_dir = ''
  generator = importlib.import_module('configs.vae_gen').get_config('positive,smoke')
  generator.data.dataset, generator.data.data_dir = 'folder', 'data'
  generator.export.dir = 'data/no/synthetic'
  with pytest.raises(ValueError, match=r'export.dir .* is inside the data folder'):
    run_setup.resolve_paths(generator, 'run')
  config.synthetic_dirs = '~/a/synthetic, ~/b/synthetic'  # (each export's ~, after a space too)
  run_setup.resolve_paths(config, 'run')
  assert config.synthetic_dirs == f'{tmp_path}/home/a/synthetic, {tmp_path}/home/b/synthetic'
  # Orbax and XLA take UTF-8 paths only (they failed with tracebacks, the workdir half made).
  with pytest.raises(ValueError, match='not valid UTF-8'):
    run_setup.resolve_paths(config, os.fsdecode(b'run_\xff'))
  # A run's data folder named otherwise on a rerun (relative, absolute, a link) is the same.
  (tmp_path / 'link').symlink_to(tmp_path / 'data')
  saved = {'task': 'cnn_cls', 'data': {'data_dir': 'data'}}
  for same in ('data/', str(tmp_path / 'data'), 'link'):
    assert not reruns.config_changes(saved, {'task': 'cnn_cls', 'data': {'data_dir': same}})
  assert reruns.config_changes(saved, {'task': 'cnn_cls', 'data': {'data_dir': 'home'}}) == [
      "data.data_dir: 'data' -> 'home'"]
  # A phantom run begun with a data_dir (which launch now refuses): its rerun may drop it.
  phantom = {'task': 'cnn_cls', 'data': {'dataset': 'phantom', 'data_dir': 'data'}}
  assert not reruns.config_changes(phantom, {'task': 'cnn_cls',
                                             'data': {'dataset': 'phantom', 'data_dir': ''}})
  assert reruns.config_changes(phantom, {'task': 'cnn_cls',
                                         'data': {'dataset': 'folder', 'data_dir': 'data'}}) == [
      "data.dataset: 'phantom' -> 'folder'"]
  assert reruns.config_changes({'data': {'dataset': 'folder', 'data_dir': 'data'}},
                               {'data': {'dataset': 'folder', 'data_dir': 'home'}})


def test_launch_refuses_another_run_s_workdir_before_writing_anything(tmp_path):
  (tmp_path / 'config.json').write_text('{"task": "cnn_cls", "learning_rate": 0.001}')
  result = _launch('--config=configs/vae_gen.py:positive,smoke', f'--workdir={tmp_path}')
  assert result.returncode != 0 and 'holds a cnn_cls run' in result.stderr
  assert 'Traceback' not in result.stderr
  assert (tmp_path / 'config.json').read_text() == '{"task": "cnn_cls", "learning_rate": 0.001}'
  assert os.listdir(tmp_path) == ['config.json']  # (no .lock either)


def _files_but_the_lock(workdir):
  """{name: bytes} of a workdir's files, but .lock (which names the process that last ran)."""
  return {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file() and p.name != '.lock'}


def test_a_refused_rerun_leaves_its_run_s_config_json(tmp_path, cache_dir):
  # Fewer epochs than it has trained: launch writes config.json (num_epochs may change on a
  # rerun) before the task finds out; the refusal puts the run's own back.
  args = ['--config=configs/cnn_cls.py:real,smoke', f'--workdir={tmp_path}',
          f'--config.cache_dir={cache_dir}']
  assert _launch(*args).returncode == 0
  before = _files_but_the_lock(tmp_path)
  result = _launch(*args, '--config.num_epochs=1')
  assert result.returncode != 0 and 'more than num_epochs=1 give' in result.stderr
  assert 'Traceback' not in result.stderr
  assert _files_but_the_lock(tmp_path) == before


def test_a_rerun_that_fails_on_its_data_leaves_its_run_s_config_json(tmp_path, cache_dir):
  # A rerun with a setting a rerun may change, whose data have since become unreadable: the
  # results it did not replace keep the config.json that describes them.
  from PIL import Image
  from brainjax.data import phantom
  for folder, positive in (('yes', True), ('no', False)):
    (tmp_path / 'data' / folder).mkdir(parents=True)
    for index in range(12):
      image = phantom.phantom_slice(0, index, positive).image
      Image.fromarray(image).save(tmp_path / 'data' / folder / f'{index}.png')
  args = ['--config=configs/cnn_cls.py:real,smoke', f'--workdir={tmp_path / "run"}',
          f'--config.cache_dir={cache_dir}', '--config.data.dataset=folder',
          f'--config.data.data_dir={tmp_path / "data"}']
  first = _launch(*args)
  assert first.returncode == 0, first.stderr[-2000:]
  before = _files_but_the_lock(tmp_path / 'run')
  for path in (tmp_path / 'data' / 'no').iterdir():
    path.write_text('no longer an image')
  result = _launch(*args, '--config.log_every_steps=3')
  assert result.returncode != 0 and 'no healthy slices' in result.stderr
  assert 'Traceback' not in result.stderr
  assert _files_but_the_lock(tmp_path / 'run') == before


def test_a_new_run_refused_on_its_data_leaves_no_workdir(tmp_path, cache_dir):
  # Refused once its data is split (too few slices for the split, a batch larger than the
  # training set): launch had written config.json and .lock, a half-made workdir.
  args = ['--config=configs/cnn_cls.py:real,smoke', f'--config.cache_dir={cache_dir}',
          '--config.data.num_per_class=8', '--config.batch_size=16']
  result = _launch(*args, f'--workdir={tmp_path / "new" / "run"}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert 'larger than the 12 training examples' in result.stderr
  assert not (tmp_path / 'new').exists()
  (tmp_path / 'mine').mkdir()  # an empty folder the user made is kept, empty
  result = _launch(*args, f'--workdir={tmp_path / "mine"}')
  assert result.returncode != 0 and 'larger than the 12 training examples' in result.stderr
  assert list((tmp_path / 'mine').iterdir()) == []
  (tmp_path / 'mine' / '.DS_Store').write_text('')  # hidden files: a new workdir may hold them
  result = _launch(*args, f'--workdir={tmp_path / "mine"}')
  assert result.returncode != 0 and 'larger than the 12 training examples' in result.stderr
  assert [p.name for p in (tmp_path / 'mine').iterdir()] == ['.DS_Store']


def test_generate_mode_does_not_ask_the_training_batch_to_split_across_this_machine(tmp_path):
  # A generator trained at batch 8 re-exported on a machine of 3 devices: nothing trains, so
  # the batch needs no split (it was refused: "batch_size=8 does not split across 3 devices").
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=3')
  result = subprocess.run([sys.executable, 'launch.py', '--config=configs/vae_gen.py:positive,smoke',
                           '--config.mode=generate', f'--workdir={tmp_path / "run"}'],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert 'does not split' not in result.stderr
  assert 'no checkpoint in' in result.stderr  # (the run has not been trained)
  # A device count this machine lacks is still refused before anything is written.
  result = subprocess.run([sys.executable, 'launch.py', '--config=configs/vae_gen.py:positive,smoke',
                           '--config.mode=generate', '--config.num_devices=4',
                           f'--workdir={tmp_path / "other"}'],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
  assert result.returncode != 0
  assert 'num_devices=4: this process has 3 local devices; choose -1 (all) or 1 to 3' in result.stderr
  assert 'Traceback' not in result.stderr and not (tmp_path / 'other').exists()


@pytest.mark.parametrize('text', ['[1, 2]', '{"task": "vae_gen"', '{"model": "resnet"}'])
def test_a_workdir_whose_config_json_is_not_a_run_s_is_one_line_and_kept(text, tmp_path):
  # A folder of another tool's config.json (or a damaged one): a list was an AttributeError
  # traceback, malformed JSON a parser message that named no file.
  (tmp_path / 'config.json').write_text(text)
  result = _launch('--config=configs/vae_gen.py:positive,smoke', f'--workdir={tmp_path}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert 'config.json is not the config of a brainjax run' in result.stderr
  assert (tmp_path / 'config.json').read_text() == text
  assert [p.name for p in tmp_path.iterdir()] == ['config.json']


def test_a_generator_stopped_before_its_first_checkpoint_has_not_begun(tmp_path):
  # Its first epoch's sample grid is written before any checkpoint (one at most every
  # checkpoint_every_secs): killed then, it has trained nothing a rerun resumes.
  from configs import vae_gen
  from brainjax.train import reruns
  config = vae_gen.get_config('positive,smoke')
  reruns.write_config(str(tmp_path), config)
  for folder in ('checkpoints', 'best', 'tensorboard', 'samples'):
    (tmp_path / folder).mkdir()
  (tmp_path / 'samples' / 'step_0000002.png').write_bytes(b'')
  config.learning_rate = config.learning_rate / 10
  reruns.write_config(str(tmp_path), config)
  (tmp_path / 'checkpoints' / '2').mkdir()  # a committed checkpoint: now it has begun
  config.learning_rate = config.learning_rate * 10
  with pytest.raises(reruns.RerunRefused, match='learning_rate'):
    reruns.write_config(str(tmp_path), config)


def test_a_cache_folder_that_cannot_be_made_is_named(tmp_path):
  (tmp_path / 'file').write_text('')
  (tmp_path / 'locked').mkdir(mode=0o500)
  (tmp_path / 'link').symlink_to(tmp_path / 'nowhere')  # (makedirs: a bare 'File exists')
  cases = [(tmp_path / 'file', 'it is a file'), (tmp_path / 'file' / 'sub', 'file is a file'),
           (tmp_path / 'link', 'it is a link to nothing'),
           (tmp_path / 'link' / 'sub', 'link is a link to nothing')]
  if os.geteuid() != 0:  # (root writes anywhere)
    cases.append((tmp_path / 'locked' / 'cache', 'locked is not writable'))
  for cache, reason in cases:
    result = _launch('--config=configs/cnn_cls.py:real,smoke', f'--workdir={tmp_path / "run"}',
                     f'--config.cache_dir={cache}')
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert f'the cache folder {str(cache)!r}' in result.stderr and reason in result.stderr
    assert not (tmp_path / 'run').exists()


def test_late_reads_of_a_damaged_checkpoint_print_nothing_else_is_hidden():
  import launch  # pylint: disable=g-import-not-at-top
  passed_on = []
  hook = launch.quiet_late_reads(passed_on.append)
  late_read = types.SimpleNamespace(exc_value=RuntimeError('Event loop is closed'))
  other = types.SimpleNamespace(exc_value=RuntimeError('a bug of ours'))
  hook(late_read)
  hook(other)
  assert passed_on == [other]


def test_the_run_log_drops_library_chatter_but_not_warnings_or_errors():
  import launch  # pylint: disable=g-import-not-at-top

  def record(level, path, error=None, name='absl', message='message'):
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord(name, level, path, 1, message, (), exc_info)
  skipped = "Unable to initialize backend '%s': %s"  # (JAX's message: a backend it skipped)
  assert not launch.quiet_libraries(record(logging.INFO, 'xla_bridge.py', None,
                                           'jax._src.xla_bridge', skipped))
  assert launch.quiet_libraries(record(logging.WARNING, 'xla_bridge.py', None,
                                       'jax._src.xla_bridge', skipped))
  assert launch.quiet_libraries(record(logging.INFO, 'xla_bridge.py', None, 'jax._src.xla_bridge'))
  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not launch.quiet_libraries(record(logging.INFO, orbax))
  assert launch.quiet_libraries(record(logging.WARNING, orbax))
  waited = ('Waiting for previous save to complete took %f seconds. If this number is high, '
            'consider checkpointing less frequently.')  # (the loop's own wait for best/)
  assert not launch.quiet_libraries(record(logging.WARNING, orbax, message=waited))
  assert launch.quiet_libraries(record(logging.ERROR, orbax, OSError('disk full')))
  assert not launch.quiet_libraries(record(logging.ERROR, orbax, KeyboardInterrupt()))
  # (a save a Ctrl-C stopped as it began: a 35-line traceback beside the run's one line)
  assert not launch.quiet_libraries(record(logging.ERROR, orbax, RuntimeError(
      'cannot schedule new futures after shutdown')))
  assert launch.quiet_libraries(record(logging.ERROR, orbax, RuntimeError('a bug of theirs')))
  # (A save that found no room: the run ends with one line saying so.)
  full_disk = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local '
                         'file "/w/best/4.orbax-checkpoint-tmp/": Failed to write 83492 bytes '
                         "to file 13: No space left on device [os_error_code='28']")
  assert not launch.quiet_libraries(record(logging.ERROR, orbax, full_disk))
  assert not launch.quiet_libraries(record(logging.ERROR, orbax, OSError(28, 'No space left')))
  assert launch.quiet_libraries(record(logging.INFO, '/brainjax/train/loop.py'))
  assert launch.quiet_libraries(record(logging.ERROR, '/brainjax/x.py', KeyboardInterrupt()))


def test_a_refused_new_run_removes_every_folder_its_workdir_path_made(tmp_path):
  # os.makedirs('new/b/../c') makes new/b as well as new/c: it was left behind, empty.
  from brainjax.train import run_setup
  from configs import vae_gen
  config = vae_gen.get_config('positive,smoke')
  workdir = run_setup.resolve_paths(config, os.path.join(tmp_path, 'new', 'b', '..', 'c'))
  previous, made = run_setup.prepare_workdir(config, workdir)
  assert previous is None and (tmp_path / 'new' / 'c' / 'config.json').exists()
  run_setup.after_failure(workdir, previous, made, 0.0, ValueError('refused on its data'))
  assert list(tmp_path.iterdir()) == []
  # A link to nothing as the last part is refused as such, '..' or not (its target was made).
  (tmp_path / 'a').mkdir()
  (tmp_path / 'a' / 'dangling').symlink_to(tmp_path / 'nowhere')
  workdir = run_setup.resolve_paths(config, os.path.join(tmp_path, 'a', '..', 'a', 'dangling'))
  with pytest.raises(ValueError, match='is a link to nothing'):
    run_setup.prepare_workdir(config, workdir)
  assert not (tmp_path / 'nowhere').exists()


def test_a_batch_that_does_not_split_is_refused_with_the_settings(tmp_path):
  assert jax.local_device_count() == 8
  config = cnn_config.get_config('real,smoke')
  config.cache_dir = str(tmp_path / 'cache')
  config.batch_size = 12  # 8 devices
  with pytest.raises(ValueError, match='batch_size=12 does not split across 8 devices'):
    run_setup.check_settings(config, cnn_cls)
  config.batch_size = 16
  run_setup.check_settings(config, cnn_cls)


@pytest.mark.parametrize('field', ['checkpoint_every_secs', 'log_every_steps', 'keep_checkpoints',
                                   'cache_dir', 'num_devices', 'multihost'])
def test_how_a_run_runs_may_change_in_a_rerun(field):
  saved = {'task': 'cnn_cls', 'learning_rate': 1e-4, field: 1}
  assert reruns.config_changes(saved, dict(saved, **{field: 2})) == []
  assert reruns.config_changes(saved, dict(saved, learning_rate=1e-3)) == [
      'learning_rate: 0.0001 -> 0.001']


def test_a_classifier_s_rerun_may_name_its_exports_otherwise():
  # (a run begun from another folder, or on a moved generator's identical re-export, was
  # refused; the checkpoints' data key refuses other images: test_synthetic's training key)
  saved = {'task': 'cnn_cls', 'synthetic_dirs': 'runs/a/synthetic,runs/b/synthetic'}
  assert reruns.config_changes(saved, dict(saved, synthetic_dirs='/x/a/synthetic,/x/b')) == []


def test_a_write_stamped_up_to_a_second_before_the_start_counts_as_a_change(tmp_path):
  (tmp_path / 'metrics.json').write_text('{}')
  start = time.time()
  os.utime(tmp_path / 'metrics.json', (start - 10, start - 10))
  assert reruns.untouched_since(str(tmp_path), start)
  # A file system that keeps whole seconds stamps a write made after `start` up to 1 s before it.
  (tmp_path / 'predictions.csv').write_text('rewritten')
  os.utime(tmp_path / 'predictions.csv', (start - 0.5, start - 0.5))
  assert not reruns.untouched_since(str(tmp_path), start)


def test_a_prediction_may_be_redone_in_its_workdir_with_other_inputs(tmp_path):
  first = predict_config.get_config('smoke')
  first.input = 'scans/a'
  reruns.write_config(str(tmp_path), first)
  (tmp_path / 'predictions.csv').write_text('path\n')
  (tmp_path / 'metrics.json').write_text('{}')
  second = predict_config.get_config('smoke')
  second.input = 'scans/b'
  assert reruns.check_workdir(str(tmp_path), second) == first.to_json_best_effort(indent=1)


@pytest.mark.parametrize('size', [128, 384])
def test_dbscan_eps_all_under_one_pixel_step_are_refused_and_the_advised_one_taken(size):
  # (a constant rule, scored in Table 1; the advice read 0.007812 at 128 px, itself refused)
  config = importlib.import_module('configs.cvae_cls').get_config('real,smoke')
  config.data.image_size = size
  config.anomaly.dbscan_eps = (0.5 / size,)
  with pytest.raises(ValueError, match=f'under one pixel step, 1/{size}') as refused:
    cvae_cls.check_config(config)
  config.anomaly.dbscan_eps = (float(re.search(r'at least ([0-9.]+)', str(refused.value))[1]),)
  cvae_cls.check_config(config)
