"""Config strings, overrides and launch.py's one-line errors."""
import importlib
import pathlib
import subprocess
import sys

import pytest

from configs import common
REPO = pathlib.Path(__file__).resolve().parents[1]

CONFIGS = ('vae_gen', 'gan_gen', 'cnn_cls', 'cvae_cls', 'study', 'predict')


def test_parse_arg_variants_modifiers_and_values():
  opts = common.parse_arg('negative,smoke,seed=3', variants=('positive', 'negative'), seed=0)
  assert (opts.variant, opts.smoke, opts.seed) == ('negative', True, 3)
  assert common.parse_arg('', variants=('positive', 'negative')).variant == 'positive'


@pytest.mark.parametrize('arg, message', [
    ('postive', 'unknown config word'),
    ('positive,negative', 'choose one variant'),
    ('seed=1', 'unknown config option'),
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
])
def test_launch_bad_config_is_a_short_error(args, message, tmp_path):
  result = _launch(*args, f'--workdir={tmp_path}')
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
