"""Test-wide settings, fixed before JAX starts: strict ranks and 8 fake CPU devices (for pmap)."""
import atexit
import json
import os
import pathlib
import shutil
import tempfile
import types

os.environ['JAX_NUMPY_RANK_PROMOTION'] = 'raise'
# The 8 fake devices share 2 cores on CI: a collective may wait minutes for its slowest
# device there, which XLA would otherwise treat as stuck and abort the process.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8'
                           + ' --xla_cpu_collective_call_terminate_timeout_seconds=1800'
                           + ' --xla_cpu_collective_timeout_seconds=1800')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# A GPU multiplies float32 in TF32 by default (10-bit mantissa, relative errors near 5e-4):
# the tests compare exact reformulations at float32, as the CPU computes them anyway.
os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')
# One on-disk compilation cache for the session: tests that build the same tiny networks
# (and the launch.py subprocesses) reuse compiled programs instead of recompiling them.
# The process that makes it removes it at exit (pytest-xdist's workers inherit it).
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='brainjax-xla-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
BR35H = pathlib.Path(os.environ.get('BRAINJAX_BR35H', REPO.parent / 'shared' / 'data' / 'br35h'))


@pytest.fixture
def br35h_dir():
  """The real Br35H copy beside the checkout; tests using it skip on a user's machine."""
  if not (BR35H / 'yes').is_dir() or not (BR35H / 'no').is_dir():
    pytest.skip(f'real Br35H data not found at {BR35H} (set BRAINJAX_BR35H to its folder)')
  return BR35H


@pytest.fixture
def cache_dir(tmp_path_factory):
  """A per-session preprocessing cache, so tests never touch ~/.cache."""
  return str(tmp_path_factory.getbasetemp() / 'cache')


@pytest.fixture
def eight_devices():
  """Data-parallel tests need conftest's 8 fake CPU devices; a GPU run has its GPUs only."""
  if jax.local_device_count() < 8:
    pytest.skip(f'needs 8 local devices, the {jax.default_backend()} backend has '
                f'{jax.local_device_count()} (JAX_PLATFORMS=cpu runs it)')


class StopAfterValidating(Exception):
  """Raised by validated_on's stand-in of loop.fit once it has validated."""


@pytest.fixture
def validated_on(monkeypatch, tmp_path, cache_dir):
  """validated_on(task, validation_fn, config): what a task's validation function is given at
  the first validation (its third argument) and the run's eval_ids.json, without training
  (tests/test_loop.py's): task.train_and_evaluate(config) runs, with loop.fit replaced by a
  stand-in that validates once, as fit does every epoch, then stops it."""
  from brainjax.tasks import datasets  # pylint: disable=g-import-not-at-top
  from brainjax.train import loop  # pylint: disable=g-import-not-at-top
  fitted = {}  # fit's keyword arguments
  keyed = []  # datasets.training_key's arguments
  training_key = datasets.training_key

  def fit(config, workdir, state, train_step, train_arrays, *, evaluate, **kwargs):
    del config, workdir, train_step, train_arrays
    fitted.update(kwargs)
    evaluate(types.SimpleNamespace(variables=state))
    raise StopAfterValidating

  def run(task, validation_fn, config):
    validated = []
    def record(model, variables, data, *args, **kwargs):
      del model, variables, args, kwargs
      validated.append(data)
      return {'loss': 1.0}
    monkeypatch.setattr(task, validation_fn, record)
    monkeypatch.setattr(loop, 'fit', fit)
    # (no network: its initialisation compiles for seconds, and no weights are looked at here)
    monkeypatch.setattr(task, 'create_train_state', lambda config, model, rng: {})
    def key_spy(*args):
      keyed.append(args)
      return training_key(*args)
    monkeypatch.setattr(datasets, 'training_key', key_spy)
    config.cache_dir = cache_dir
    with pytest.raises(StopAfterValidating):
      task.train_and_evaluate(config, str(tmp_path))
    assert len(validated) == 1
    with open(tmp_path / 'eval_ids.json') as f:  # (the run's own record)
      eval_ids = json.load(f)
    # The checkpoints' data key covers the validation slices (a file replaced under its name
    # between a kill and the resume went unnoticed).
    ((_, _, validation),) = keyed
    assert sorted(map(str, validation.ids)) == eval_ids['val']
    assert fitted['data_key'] == training_key(*keyed[0])
    return validated[0], eval_ids

  return run


@pytest.fixture
def figures_made(monkeypatch):
  """figures_made(module): a list that each matplotlib Figure `module` makes from then on joins
  (the figure modules make theirs without pyplot, so no pyplot hook sees them)."""

  def record(module):
    made = []

    class Recording(module.Figure):
      def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made.append(self)

    monkeypatch.setattr(module, 'Figure', Recording)
    return made

  return record
