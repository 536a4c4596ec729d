"""Config strings, overrides and launch.py's one-line errors."""
import importlib
import pathlib
import subprocess
import sys

import pytest

from configs import common
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


@pytest.mark.parametrize('args, message', [
    (['--config=configs/vae_gen.py:sideways'], "unknown config word 'sideways'"),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.num_epochs=two'],
     'num_epochs'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.no_such_field=1'],
     'no_such_field'),
    (['--config=configs/nope.py'], 'nope.py'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.multihost=True'],
     'Set JAX_COORDINATOR_ADDRESS'),
    (['--config=configs/predict.py:smoke', '--config.multihost=True'], 'predict runs on one host'),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.batch_size=0'], 'batch_size=0'),
    (['--config=configs/cnn_cls.py:real,smoke', '--config.keep_checkpoints=0'],
     'keep_checkpoints=0'),
    (['--config=configs/vae_gen.py:positive,smoke', '--config.export.num_samples=0'],
     'export.num_samples=0'),
    (['--config=configs/study.py:quick,smoke', '--config.generators=vea'], "generators='vea'"),
    (['--config=configs/study.py:quick,smoke', '--config.synthetic_sources=gan'],
     "synthetic_sources='gan'"),
])
def test_launch_bad_config_is_a_short_error(args, message, tmp_path):
  result = _launch(*args, f'--workdir={tmp_path}')
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


def test_a_workdir_is_new_empty_or_the_same_run_s(tmp_path):
  from configs import cnn_cls
  from brainjax.train import reporting
  config = cnn_cls.get_config('real,smoke')
  reporting.write_config(str(tmp_path), config)
  config.num_epochs, config.log_every_steps = 5, 1  # how long and how: a resume may change
  reporting.write_config(str(tmp_path), config)
  config.learning_rate = 0.5  # what it learns: not in the same checkpoint
  with pytest.raises(ValueError, match=r'learning_rate: 0.001 -> 0.5'):
    reporting.write_config(str(tmp_path), config)
  from configs import predict
  with pytest.raises(ValueError, match='holds a cnn_cls run'):  # e.g. predict into its model
    reporting.write_config(str(tmp_path), predict.get_config('smoke'))
  (tmp_path / 'scans').mkdir()
  (tmp_path / 'scans' / 'a.png').write_bytes(b'')
  with pytest.raises(ValueError, match='not a brainjax workdir'):  # e.g. predict into its input
    reporting.write_config(str(tmp_path / 'scans'), predict.get_config('smoke'))
  assert sorted(p.name for p in (tmp_path / 'scans').iterdir()) == ['a.png']


def test_launch_refuses_another_run_s_workdir_before_writing_anything(tmp_path):
  (tmp_path / 'config.json').write_text('{"task": "cnn_cls", "learning_rate": 0.001}')
  result = _launch('--config=configs/vae_gen.py:positive,smoke', f'--workdir={tmp_path}')
  assert result.returncode != 0 and 'holds a cnn_cls run' in result.stderr
  assert 'Traceback' not in result.stderr
  assert (tmp_path / 'config.json').read_text() == '{"task": "cnn_cls", "learning_rate": 0.001}'
