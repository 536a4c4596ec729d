"""The shared training skeleton: resume after a kill, NaN stop, best checkpoint, plateau, pmap."""
import errno
import functools
import json
import math
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from tensorboardX.proto import event_pb2

from brainjax.train import checkpoints
from brainjax.train import loop
from brainjax.train import parallel
from brainjax.train import reporting
from brainjax.train import reruns
from brainjax.train.state import TrainState

REPO = pathlib.Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
  """Dense + BatchNorm: enough to exercise batch_stats and cross-device statistics."""
  axis_name: str = None

  @nn.compact
  def __call__(self, x, train):
    x = nn.Dense(8, use_bias=False)(x)  # a bias before BatchNorm has no gradient
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x)
    return nn.Dense(1)(nn.relu(x))[:, 0]


def make_state(model, learning_rate=0.05):
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)), train=False)
  return TrainState.create(variables, optax.inject_hyperparams(optax.adam)(learning_rate))


def train_step(state, batch, rng, *, model, axis_name=None, poison_at=-1, nan_grad_at=-1):
  noise = parallel.example_normal(rng, batch['x'].shape[0], (), axis_name)

  def loss_fn(params):
    pred, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                batch['x'], train=True, mutable=['batch_stats'])
    loss = jnp.mean(jnp.square(pred - batch['y'] - 0.01 * noise))
    loss = jnp.where(state.step == poison_at, jnp.nan, loss)
    return loss, updates['batch_stats']

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.mean_over_devices(grads, axis_name)
  # A finite loss with a NaN gradient (the gradient of sqrt at 0, say).
  grads = jax.tree.map(lambda g: jnp.where(state.step == nan_grad_at, jnp.nan, g), grads)
  return state.apply_gradients(grads, stats), parallel.mean_over_devices({'loss': loss}, axis_name)


def data(n=64):
  x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
  return {'x': x, 'y': (x @ np.array([1.0, -2.0, 0.5, 0.0], np.float32))}


def config(**overrides):
  base = dict(num_devices=1, batch_size=16, num_epochs=3, seed=0, learning_rate=0.05,
              log_every_steps=1, checkpoint_every_secs=0.0, keep_checkpoints=2)
  return ml_collections.ConfigDict({**base, **overrides})


def predict_and_improve(state):
  """An `evaluate` that reads the variables as a task's does, and is a new best every epoch."""
  pred = TinyNet().apply(state.variables, data()['x'], train=False)
  return {'loss': 1.0 / (1 + int(state.step)), 'pred_mean': float(jnp.mean(pred))}


def run(workdir, cfg, hooks=(), evaluate=None, poison_at=-1, nan_grad_at=-1, data_key=None):
  axis = parallel.AXIS if cfg.num_devices > 1 else None
  step = functools.partial(train_step, model=TinyNet(axis), poison_at=poison_at,
                           nan_grad_at=nan_grad_at)
  return loop.fit(cfg, str(workdir), make_state(TinyNet()), step, data(), hooks=hooks,
                  evaluate=evaluate, data_key=data_key)


def interrupt_at(kill_step):
  """A `fit` hook that stops the run as a kill would, after step `kill_step`."""
  def hook(step):
    if step == kill_step:
      raise KeyboardInterrupt('simulated kill')
  return hook


def test_plateau_lowers_the_rate_after_patience_epochs():
  p = loop.Plateau()
  for loss in [1.0, 0.9, 0.95, 0.95]:
    p = loop.plateau_update(p, loss, factor=0.1, patience=2)
  assert p.scale == 1.0 and p.bad_epochs == 2
  p = loop.plateau_update(p, 0.95, factor=0.1, patience=2)
  assert p.scale == pytest.approx(0.1) and p.best == 0.9


def test_an_equal_validation_loss_is_neither_a_new_best_nor_an_improvement():
  # (torch's ReduceLROnPlateau with threshold 0; best/ stays at the first epoch of a tie)
  assert loop.plateau_update(loop.Plateau(best=1.0), 1.0, factor=0.5, patience=0).scale == 0.5
  config = ml_collections.ConfigDict(dict(plateau_factor=0.5, plateau_patience=3))
  meta, _, new_best = loop._after_validation(config, {'best_val_loss': 1.0}, loop.Plateau(),
                                             1.0, 5)
  assert new_best is None and meta['best_val_loss'] == 1.0
  assert loop._after_validation(config, {'best_val_loss': 1.0}, loop.Plateau(), 0.999, 5)[2] == {
      'val_loss': 0.999, 'epoch': 5}


def test_reserved_keys_are_no_training_step_s_nor_each_other_s():
  seed = 7
  data = lambda key: tuple(np.asarray(jax.random.key_data(key)))
  steps = {data(jax.random.fold_in(jax.random.PRNGKey(seed), k)) for k in range(1000)}
  reserved = {data(loop.reserved_key(seed, p)) for p in ('sample_grid', 'latent_samples')}
  assert len(reserved) == 2 and not reserved & steps


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
  reference, _ = run(tmp_path / 'whole', config())
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path / 'killed', config(), hooks=[interrupt_at(7)])
  resumed, summary = run(tmp_path / 'killed', config())
  assert summary['steps'] == 12
  jax.tree.map(np.testing.assert_array_equal, resumed.params, reference.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.batch_stats, reference.batch_stats)


@pytest.mark.parametrize('damaged', ['meta/metadata', 'state/_METADATA'])
def test_a_damaged_checkpoint_is_named_and_the_one_before_it_resumes(tmp_path, damaged):
  reference, _ = run(tmp_path / 'whole', config())
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path / 'killed', config(), hooks=[interrupt_at(7)])
  folder = tmp_path / 'killed' / 'checkpoints'
  newest = max(int(step.name) for step in folder.iterdir() if step.name.isdigit())
  (folder / str(newest) / damaged).write_text('{"trunc')
  with pytest.raises(ValueError, match=f'cannot read the checkpoint {folder / str(newest)}, '):
    run(tmp_path / 'killed', config())
  (folder / str(newest)).rename(tmp_path / 'moved_out')  # as the message says
  # (and a save a kill cut short, whose temporary folder the resumed run deletes)
  shutil.copytree(tmp_path / 'moved_out', folder / f'{newest}.orbax-checkpoint-tmp-1700000000000000')
  resumed, summary = run(tmp_path / 'killed', config())
  assert summary['steps'] == 12
  jax.tree.map(np.testing.assert_array_equal, resumed.params, reference.params)
  assert sorted(p.name for p in folder.iterdir()) == ['11', '12']  # (no 6 kept from the tmp)


def test_a_finished_run_run_again_returns_its_state_and_summary_without_compiling(tmp_path):
  finished, finished_summary = run(tmp_path, config(), evaluate=lambda s: {'loss': 1.0})

  def train_step_not_to_trace(*args, **kwargs):
    raise AssertionError('the finished run compiled its train step')

  again, summary = loop.fit(config(), str(tmp_path), make_state(TinyNet()),
                            train_step_not_to_trace, data())
  jax.tree.map(np.testing.assert_array_equal, again.params, finished.params)
  assert {'train_loss', 'train_images_per_s', 'val_loss'} <= set(summary)
  assert summary == finished_summary


def test_a_run_resumes_only_on_its_own_training_data(tmp_path):
  run(tmp_path, config(num_epochs=1), data_key='export A')
  with pytest.raises(ValueError, match='trained on other data than it reads now'):
    run(tmp_path, config(num_epochs=2), data_key='export B')
  with pytest.raises(ValueError, match='trained on other data'):
    run(tmp_path, config(num_epochs=1), data_key='export B')  # finished: not redone on B either
  assert run(tmp_path, config(num_epochs=2), data_key='export A')[1]['steps'] == 8
  # A key with its older forms: a checkpoint holding one resumes, and then keeps the key.
  assert run(tmp_path, config(num_epochs=3), data_key=('export C', 'export A'))[1]['steps'] == 12
  with pytest.raises(ValueError, match='trained on other data'):
    run(tmp_path, config(num_epochs=4), data_key='export A')
  assert run(tmp_path, config(num_epochs=4))[1]['steps'] == 16  # no key: not compared


def test_images_per_s_leaves_out_the_process_s_first_step(tmp_path, monkeypatch):
  # (its one-off costs: a resumed run that trained one log interval reported 97 img/s, 224 steady)
  logged = []
  monkeypatch.setattr(loop.logging, 'info',
                      lambda msg, *args: logged.append(str(msg) % args if args else str(msg)))
  def slow_first_step(step):  # (stands in for the first step's one-off costs)
    if step == 1:
      time.sleep(1.0)
  run(tmp_path, config(num_epochs=1, log_every_steps=4), hooks=[slow_first_step])
  (line,) = [m for m in logged if m.startswith('step 4/4')]
  assert float(line.split('images_per_s=')[1]) > 2 * 4 * 16 / 1.0  # (4 steps in 1 s and more)
  logged.clear()  # one step a log interval: that step's rate, the first one's too
  run(tmp_path / 'b', config(num_epochs=1, log_every_steps=1), hooks=[slow_first_step])
  rates = [float(m.split('images_per_s=')[1]) for m in logged if m.startswith('step ')]
  assert len(rates) == 4 and rates[0] < 16 / 1.0 < min(rates[1:])


def test_reading_a_workdir_without_checkpoints_creates_nothing_in_it(tmp_path):
  # (predict or mode=generate pointed at a run that stopped before training: a folder made
  # there would lock it, as begun, against the corrected rerun)
  with pytest.raises(FileNotFoundError, match='no best checkpoint'):
    checkpoints.restore_best(str(tmp_path), make_state(TinyNet()))
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    checkpoints.restore_latest(str(tmp_path), make_state(TinyNet()))
  assert checkpoints.latest_meta(str(tmp_path)) is None
  assert list(tmp_path.iterdir()) == []


def test_check_resume_refuses_what_fit_would_before_anything_is_written(tmp_path):
  with pytest.raises(ValueError, match='batch_size=16 is larger than the 8 training examples'):
    loop.check_resume(config(), str(tmp_path / 'new'), 8)
  assert not (tmp_path / 'new').exists()
  run(tmp_path, config(num_epochs=2))  # 8 steps
  loop.check_resume(config(num_epochs=2), str(tmp_path), 64)
  # Fewer epochs than it has trained: config.json would misdescribe the model it holds.
  with pytest.raises(ValueError, match=r'trained 8 steps \(4 an epoch\), more than '
                                       r'num_epochs=1 give: rerun with num_epochs >= 2'):
    run(tmp_path, config(num_epochs=1))
  assert run(tmp_path, config(num_epochs=2))[1]['steps'] == 8


def test_metrics_json_writes_an_infinite_value_as_null(tmp_path):
  # (JSON has no Infinity: a metric may be one, e.g. a loss or a ratio by zero)
  reporting.write_metrics_json(str(tmp_path), {'ratio': float('inf'), 'auroc': float('nan')})
  with open(tmp_path / 'metrics.json') as f:
    assert json.loads(f.read(), parse_constant=lambda c: pytest.fail(c)) == {
        'ratio': None, 'auroc': None}


def test_a_csv_is_written_into_a_folder_it_makes_with_missing_fields_empty(tmp_path):
  path = tmp_path / 'results' / 'privacy' / 'tumour.csv'
  reporting.write_csv(str(path), ['id', 'distance'], [{'id': 'yes/ñ.jpg', 'distance': 0.5},
                                                      {'id': 'yes/b.jpg'}])
  assert path.read_text(encoding='utf-8').splitlines() == [
      'id,distance', 'yes/ñ.jpg,0.5', 'yes/b.jpg,']


def test_a_run_that_trains_again_is_unfinished_until_its_task_writes_metrics(tmp_path):
  # A rerun with more epochs replaces best/; the old metrics.json (predict's rule settings
  # for a BrainCVAE) would sit beside another model if the rerun were killed.
  run(tmp_path, config(num_epochs=1))
  reporting.write_metrics_json(str(tmp_path), {'steps': 4})
  run(tmp_path, config(num_epochs=1))  # nothing to train: the run stays finished
  assert (tmp_path / 'metrics.json').exists()
  run(tmp_path, config(num_epochs=2))
  assert not (tmp_path / 'metrics.json').exists()


# Saves run in the background: a process killed right after starting one (os._exit skips
# every cleanup, as SIGKILL would).
_KILLED_MID_SAVE = """
import os, sys
import numpy as np
from brainjax.train import checkpoints
mngr = checkpoints.manager(sys.argv[1], 2)
checkpoints.save(mngr, 5, {'w': np.full(2**23, 5, np.float32)}, {'step': 5})
mngr.wait_until_finished()
checkpoints.save(mngr, 10, {'w': np.full(2**23, 10, np.float32)}, {'step': 10})
os._exit(1)
"""


def test_event_files_made_within_one_second_are_read_in_the_order_they_were_made(tmp_path):
  # A run resumed within a second of its killed predecessor: TensorBoard reads the files by
  # name, and the resumed run's purge marker must come after the killed run's events.
  for step in range(4):
    writer = reporting.summary_writer(str(tmp_path), purge_step=step + 1)
    writer.add_scalar('train/loss', float(step), step + 1)
    writer.close()
  assert tensorboard_scalars(tmp_path) == {'train/loss': [(1, 0.0), (2, 1.0), (3, 2.0),
                                                          (4, 3.0)]}


def test_a_file_that_fails_to_write_leaves_the_one_before_it_and_no_partial_file(tmp_path):
  # (A predict on a full disk left predictions.csv.tmp behind.)
  path = str(tmp_path / 'predictions.csv')
  with reporting.atomic_open(path) as f:
    f.write('before\n')
  with pytest.raises(OSError, match='No space') as raised:
    with reporting.atomic_open(path) as f:
      f.write('half of it')
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert raised.value.filename == path  # (the run's one line said where: it did not)
  assert sorted(os.listdir(tmp_path)) == ['predictions.csv']
  assert pathlib.Path(path).read_text() == 'before\n'


def test_an_image_that_finds_the_disk_full_is_named_and_leaves_no_partial_file(
    tmp_path, monkeypatch):
  # (a full disk was "error: [Errno 28] No space left on device", naming no file, and left an
  # empty samples/step_*.png, an export or a figure in another folder than the workdir)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from brainjax.data import synthetic  # pylint: disable=g-import-not-at-top
  from brainjax.evaluation import roc  # pylint: disable=g-import-not-at-top
  save = Image.Image.save
  def save_half(image, fp, *args, **kwargs):
    save(image, fp, *args, **kwargs)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(Image.Image, 'save', save_half)
  grid = str(tmp_path / 'samples' / 'step_6.png')
  with pytest.raises(OSError, match='No space') as raised:
    reporting.save_image_grid(grid, np.zeros((2, 4, 4, 1), np.float32))
  assert raised.value.filename == grid and os.listdir(tmp_path / 'samples') == []
  with pytest.raises(OSError, match='No space') as raised:
    synthetic.write_synthetic(str(tmp_path / 'export'), np.zeros((2, 4, 4, 1)), 1, {})
  assert raised.value.filename == str(tmp_path / 'export' / 'yes' / '00000.png')
  monkeypatch.setattr(Image.Image, 'save', save)
  import matplotlib.figure  # pylint: disable=g-import-not-at-top
  def savefig_half(figure, fp, **kwargs):
    fp.write(b'\x89PNG')
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', savefig_half)
  roc_path = str(tmp_path / 'figures' / 'roc.png')
  with pytest.raises(OSError, match='No space') as raised:
    roc.save_roc_figure(roc_path, [roc.Curve('a', np.array([0., 1.]), np.array([0., 1.]), 0.5)])
  assert raised.value.filename == roc_path and os.listdir(tmp_path / 'figures') == []


def test_a_kill_during_a_save_keeps_the_checkpoints_before_it(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  child = subprocess.run([sys.executable, '-c', _KILLED_MID_SAVE, directory], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
  assert child.returncode == 1, child.stderr
  template = {'w': np.zeros(2**23, np.float32)}
  with checkpoints.manager(directory, 2) as mngr:
    assert 5 in mngr.all_steps()
    for step in mngr.all_steps():  # whatever was committed is whole
      state, meta = checkpoints.restore(mngr, template, step)
      assert meta['step'] == step and (state['w'] == step).all()
    if 10 not in mngr.all_steps():  # cut off mid-write: the resumed run saves it again
      checkpoints.save(mngr, 10, {'w': np.full(2**23, 10, np.float32)}, {'step': 10})
      mngr.wait_until_finished()
    state, meta = checkpoints.restore(mngr, template)
    assert meta['step'] == 10 and (state['w'] == 10).all()


# A save whose array file outgrows the file size limit (a write without room, as on a full
# disk), logged through launch's filter; prints the error it ends with.
_SAVED_WITHOUT_ROOM = """
import resource, signal, sys
import numpy as np
from absl import logging
import launch
from brainjax.train import checkpoints
logging.get_absl_handler().addFilter(launch.quiet_libraries)
logging.use_absl_handler()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (a write past the limit fails: EFBIG)
mngr = checkpoints.manager(sys.argv[1], 1)
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
  checkpoints.save(mngr, 1, {'w': np.random.default_rng(0).normal(size=2**21).astype(np.float32)},
                   {'step': 1})
  checkpoints.close(mngr)
except OSError as error:
  print(f'error: {error}')
"""

# Orbax's error on a full disk (its tensorstore's, from a smoke run on a 700 KB tmpfs).
_FULL_DISK = ('RESOURCE_EXHAUSTED: Error writing "params.BatchNorm_1.bias/0" in OCDBT database at '
              'local file "/w/best/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
              'ocdbt.process_0/": Failed writing: "/w/best/4.orbax-checkpoint-tmp/'
              'state.orbax-checkpoint-tmp/ocdbt.process_0/d/e4524d6a3021560882628deff340d115": '
              'Failed to write 83492 bytes to file 13: No space left on device '
              "[os_error_code='28']")


@pytest.mark.skipif(not hasattr(signal, 'SIGXFSZ'), reason='needs a POSIX file size limit')
def test_a_save_without_room_to_write_ends_in_one_line_naming_its_folder(tmp_path):
  # (Orbax logged its failure from each of its threads, some 190 lines of tracebacks, and the
  # run ended with tensorstore's paragraph about one array's file in a temporary folder.)
  directory = str(tmp_path / 'checkpoints')
  child = subprocess.run([sys.executable, '-c', _SAVED_WITHOUT_ROOM, directory], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
  assert child.returncode == 0, child.stderr
  assert child.stdout == f'error: cannot write a checkpoint in {directory}: File too large\n'
  assert 'Traceback' not in child.stderr, child.stderr


def test_a_full_disk_is_named_with_the_checkpoint_folder():
  def fail():
    raise ValueError(_FULL_DISK)
  mngr = types.SimpleNamespace(directory='/w/best', wait_until_finished=fail)
  with pytest.raises(OSError) as raised:
    checkpoints.wait(mngr)
  assert str(raised.value) == 'cannot write a checkpoint in /w/best: No space left on device'
  assert checkpoints.out_of_room(ValueError(_FULL_DISK))
  assert not checkpoints.out_of_room(ValueError('a checkpoint of another shape'))

  def refuse():
    raise ValueError('a checkpoint of another shape')  # (not a write: passed on as it is)
  with pytest.raises(ValueError, match='^a checkpoint of another shape$'):
    checkpoints.wait(types.SimpleNamespace(directory='/w/best', wait_until_finished=refuse))

  def missing():  # (an error that is not for want of room: passed on with its file name)
    raise FileNotFoundError(2, 'No such file or directory', '/w/best/3/_CHECKPOINT_METADATA')
  with pytest.raises(FileNotFoundError) as raised:
    checkpoints.wait(types.SimpleNamespace(directory='/w/best', wait_until_finished=missing))
  assert raised.value.filename == '/w/best/3/_CHECKPOINT_METADATA'


# A run killed without any cleanup (SIGKILL) in its 7th step of 12, with a save at every step.
_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, 'tests')
import test_loop
def kill(step):
  if step == 7:
    os.kill(os.getpid(), signal.SIGKILL)
test_loop.run(sys.argv[1], test_loop.config(), hooks=[kill])
"""


def tensorboard_scalars(workdir):
  """{tag: [(step, value), ...]} as TensorBoard shows workdir/tensorboard: its event files
  read in name order, where a SessionLog START at step P hides the earlier events at steps
  >= P (TensorBoard's purge of a crashed run's orphaned data)."""
  scalars = {}
  for path in sorted((pathlib.Path(workdir) / 'tensorboard').iterdir()):
    data, offset = path.read_bytes(), 0
    while offset + 12 <= len(data):
      size, = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + size])
      offset += 12 + size + 4
      if event.session_log.status == event_pb2.SessionLog.START:
        scalars = {tag: [(s, v) for s, v in points if s < event.step]
                   for tag, points in scalars.items()}
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_tensorboard_holds_every_step_once_after_a_kill_and_a_resume(tmp_path):
  # The killed run's scalars up to its last checkpoint are on disk (those written before
  # a save), and the resumed run's replace the ones it logs again.
  run(tmp_path / 'whole', config())
  whole = tensorboard_scalars(tmp_path / 'whole')
  child = subprocess.run([sys.executable, '-c', _KILLED_RUN, str(tmp_path / 'killed')],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
  assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
  assert 1 <= checkpoints.latest_meta(str(tmp_path / 'killed'))[0] <= 6
  run(tmp_path / 'killed', config())
  resumed = tensorboard_scalars(tmp_path / 'killed')
  assert [s for s, _ in resumed['train/loss']] == list(range(1, 13))
  assert resumed['train/loss'] == whole['train/loss']


def test_a_best_saved_without_its_latest_checkpoint_counts_as_trained(tmp_path, monkeypatch):
  # Saves at epoch ends, every epoch a new best. The run is killed (no cleanup) when the best
  # of step 12 is committed and the latest of step 12 is not: the two commit one after the
  # other (the best first), so a kill can land between them.
  real_save = checkpoints.save

  def save_then_killed(mngr, step, state, meta):
    real_save(mngr, step, state, meta)
    if step == 12 and pathlib.Path(str(mngr.directory)).name == 'best':
      mngr.wait_until_finished()
      raise KeyboardInterrupt('killed')

  monkeypatch.setattr(checkpoints, 'save', save_then_killed)
  evaluate = lambda s: {'loss': 1.0 / int(s.step)}
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path, config(log_every_steps=4), evaluate=evaluate)
  monkeypatch.setattr(checkpoints, 'save', real_save)
  assert checkpoints.latest_meta(str(tmp_path))[0] == 8
  assert checkpoints.best_step(str(tmp_path)) == 12
  # A rerun that would end at step 8 would report epoch 2's best validation loss and test
  # the model of step 12 (best/), beyond its run: refused, as any run shorter than trained.
  with pytest.raises(reruns.RerunRefused, match=r'trained 12 steps .* num_epochs >= 3'):
    run(tmp_path, config(num_epochs=2, log_every_steps=4), evaluate=evaluate)
  # The rerun's own best of step 12 (measured otherwise here) replaces the killed run's: Orbax
  # skips a save of a step at or before its latest, which had left the killed run's there.
  rerun = lambda s: {'loss': 0.5 / int(s.step)}
  _, summary = run(tmp_path, config(log_every_steps=4), evaluate=rerun)
  assert summary['best_val_loss'] == 0.5 / 12
  best = checkpoints.manager(str(tmp_path / 'best'), 1, create=False)
  state, meta = checkpoints.restore(best, make_state(TinyNet()))
  assert int(state.step) == 12 and meta['val_loss'] == 0.5 / 12


def test_a_finished_run_run_again_writes_nothing(tmp_path):
  # (A new TensorBoard event file made any later failure of the rerun look like a change to
  # its results, so its config.json was not put back: reruns.untouched_since.)
  run(tmp_path, config(), evaluate=predict_and_improve)

  def files():
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.rglob('*')}
  before = files()
  _, summary = run(tmp_path, config(), evaluate=predict_and_improve)
  assert summary['steps'] == 12 and files() == before


def test_results_count_as_untouched_whatever_happened_to_config_json_and_the_lock(tmp_path):
  (tmp_path / 'metrics.json').write_text('{}')
  (tmp_path / 'best').mkdir()
  for path in (tmp_path / 'metrics.json', tmp_path / 'best'):  # from an hour before the run
    os.utime(path, (time.time() - 3600,) * 2)
  start = time.time()
  reruns.lock_workdir(str(tmp_path))  # (this process holds it until the test session ends)
  (tmp_path / 'config.json').write_text('{}')
  assert reruns.untouched_since(str(tmp_path), start)
  (tmp_path / 'best' / 'x').write_text('')
  assert not reruns.untouched_since(str(tmp_path), start)


def test_the_best_is_committed_before_the_latest_checkpoint_that_names_it(tmp_path, monkeypatch):
  # The two managers commit from threads of their own: a kill after the latest's commit and
  # before the best's would leave a latest whose meta names a best that best/ does not hold.
  real_save = checkpoints.save
  best_on_disk = {}

  def save(mngr, step, state, meta):
    if pathlib.Path(str(mngr.directory)).name == 'checkpoints':
      best_on_disk[step] = checkpoints.best_step(str(tmp_path))
    real_save(mngr, step, state, meta)

  monkeypatch.setattr(checkpoints, 'save', save)
  run(tmp_path, config(log_every_steps=4), evaluate=predict_and_improve)  # a best every epoch
  assert best_on_disk == {4: 4, 8: 8, 12: 12}


def test_a_kill_between_the_best_and_the_latest_commit_resumes_to_the_same_run(tmp_path):
  # The best commits first: a kill before the latest's commit leaves best/8 beside
  # checkpoints/7. That best is no older version's to measure anew: taken as the run's best,
  # epoch 2 trained again would not beat it, and the plateau would lower the rate.
  cfg = config(plateau_factor=0.5, plateau_patience=0)
  reference, _ = run(tmp_path / 'whole', cfg, evaluate=predict_and_improve)
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path / 'killed', cfg, hooks=[interrupt_at(9)], evaluate=predict_and_improve)
  shutil.rmtree(tmp_path / 'killed' / 'checkpoints' / '8')
  assert checkpoints.best_step(str(tmp_path / 'killed')) == 8
  assert checkpoints.latest_meta(str(tmp_path / 'killed'))[0] == 7
  resumed, summary = run(tmp_path / 'killed', cfg, evaluate=predict_and_improve)
  assert summary['learning_rate'] == cfg.learning_rate  # every epoch improved: never lowered
  jax.tree.map(np.testing.assert_array_equal, resumed.params, reference.params)
  best = checkpoints.restore_best(str(tmp_path / 'killed'), make_state(TinyNet()))
  assert int(best.step) == 12


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  # The 7th step's loss is NaN; with a save at every log step the last good one is step 6.
  with pytest.raises(FloatingPointError, match=r'non-finite loss by step 7 .*\(step 6\)'):
    run(tmp_path, config(), poison_at=6)
  state, _ = checkpoints.restore_latest(str(tmp_path), make_state(TinyNet()))
  assert int(state.step) == 6
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_a_finite_loss_with_a_non_finite_update_is_never_saved(tmp_path):
  # The 6th update makes the parameters NaN while its step's loss (of the old ones) is finite.
  with pytest.raises(FloatingPointError,
                     match=r'non-finite parameters or optimizer state at step 6.*\(step 5\)'):
    run(tmp_path, config(), nan_grad_at=5)
  state, _ = checkpoints.restore_latest(str(tmp_path), make_state(TinyNet()))
  assert int(state.step) == 5
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_a_non_finite_loss_before_the_first_save_names_no_checkpoint(tmp_path):
  with pytest.raises(FloatingPointError, match='by step 3 .*No checkpoint had been saved yet'):
    run(tmp_path, config(checkpoint_every_secs=3600.0), poison_at=2)


def test_a_non_finite_loss_before_the_first_save_keeps_the_best_so_far(tmp_path):
  # 4 steps an epoch, no save due: the best (epoch 2, step 8) is only in memory when the
  # 11th step's loss is NaN. It is written as the best and as the latest checkpoint.
  losses = iter([1.0, 0.5, 0.7])
  cfg = config(num_epochs=4, checkpoint_every_secs=3600.0, plateau_factor=0.5,
               plateau_patience=0)
  with pytest.raises(FloatingPointError, match=r'by step 11 .*\(step 8\)'):
    run(tmp_path, cfg, poison_at=10, evaluate=lambda s: {'loss': next(losses)})
  template = make_state(TinyNet())
  best = checkpoints.restore_best(str(tmp_path), template)
  latest, meta = checkpoints.restore_latest(str(tmp_path), template)
  assert int(best.step) == int(latest.step) == 8
  jax.tree.map(np.testing.assert_array_equal, best.params, latest.params)
  # The run's bookkeeping as it was at step 8: epoch 1's loss was beaten, so no plateau yet.
  assert meta['best_val_loss'] == 0.5 and meta['plateau']['scale'] == 1.0
  assert meta['summary']['val_loss'] == 0.5
  # A rerun (here with a finite loss) resumes from that state.
  _, summary = run(tmp_path, cfg, evaluate=lambda s: {'loss': 0.1})
  assert summary['steps'] == 16 and summary['best_val_loss'] == 0.1


def test_a_best_with_non_finite_values_stops_the_run_and_is_never_saved(tmp_path):
  # The 8th update makes the state NaN; the end of epoch 2 (step 8) still validates at a
  # finite loss (as finite parameters beside an overflowed optimizer state do): a new best
  # that must not be saved, as the best or as the last good state a rerun resumes into.
  losses = iter([1.0, 0.5])
  cfg = config(num_epochs=4, checkpoint_every_secs=3600.0)
  with pytest.raises(FloatingPointError,
                     match=r'non-finite parameters or optimizer state at step 8.*\(step 4\)'):
    run(tmp_path, cfg, nan_grad_at=7, evaluate=lambda s: {'loss': next(losses)})
  template = make_state(TinyNet())
  best = checkpoints.restore_best(str(tmp_path), template)
  latest, meta = checkpoints.restore_latest(str(tmp_path), template)
  assert int(best.step) == int(latest.step) == 4 and meta['best_val_loss'] == 1.0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(latest))


def test_best_checkpoint_and_plateau_follow_the_validation_loss(tmp_path):
  losses = iter([1.0, 0.0, 0.7, 0.8, 0.9])  # a perfect (zero) loss is a best like any other
  cfg = config(num_epochs=5, plateau_factor=0.5, plateau_patience=1)
  final, summary = run(tmp_path, cfg, evaluate=lambda s: {'loss': next(losses)})
  assert summary['best_val_loss'] == 0.0
  best = checkpoints.restore_best(str(tmp_path), make_state(TinyNet()))
  assert int(best.step) == 8  # the end of epoch 2, 4 steps an epoch
  assert summary['learning_rate'] == pytest.approx(0.05 * 0.5)
  assert float(final.opt_state.hyperparams['learning_rate']) == pytest.approx(0.025)


def test_a_non_finite_validation_loss_is_never_the_best(tmp_path):
  losses = iter([math.nan, 1.0, math.inf, 0.5])
  _, summary = run(tmp_path, config(num_epochs=4), evaluate=lambda s: {'loss': next(losses)})
  assert summary['best_val_loss'] == 0.5
  assert int(checkpoints.restore_best(str(tmp_path), make_state(TinyNet())).step) == 16


def test_saves_wait_checkpoint_every_secs_and_the_best_is_written_with_the_latest(tmp_path):
  losses = iter([1.0, 0.5, 0.7, 0.8, 0.9])
  cfg = config(num_epochs=5, checkpoint_every_secs=3600.0)
  final, summary = run(tmp_path, cfg, evaluate=lambda s: {'loss': next(losses)})
  with checkpoints.manager(str(tmp_path / 'checkpoints'), 2) as mngr:
    assert mngr.all_steps() == [20]  # only the end: no epoch or log step was due
  best = checkpoints.restore_best(str(tmp_path), make_state(TinyNet()))
  assert int(best.step) == 8 and summary['best_val_loss'] == 0.5  # kept until that save
  assert not np.array_equal(best.params['Dense_0']['kernel'], final.params['Dense_0']['kernel'])


@pytest.mark.parametrize('num_devices', [1, 4])
def test_evaluate_runs_on_the_device_state_with_no_transfer(tmp_path, request, num_devices):
  # On a GPU a host copy of the state every epoch, and the evaluation's copies back, take
  # tens of milliseconds: evaluate gets the state where it trains.
  if num_devices > 1:
    request.getfixturevalue('eight_devices')
  first = parallel.train_devices(num_devices)[0]
  x = jax.device_put(data()['x'])  # (uncommitted, as NumPy inputs are)
  predicts, steps = [], []
  losses = {4: 1.0, 8: 2.0, 12: 0.5}  # epoch 2 lowers the rate from the device state

  def evaluate(state):
    assert all(leaf.devices() == {first} for leaf in jax.tree.leaves(state))
    with jax.transfer_guard('disallow'):  # host arrays would be copied in: an error here
      pred = predicts[-1](state.variables, x)
    steps.append(int(state.step))
    return {'loss': losses[int(state.step)], 'pred_mean': float(jnp.mean(pred))}

  lowerings = []  # (the evaluation programs')
  def count_lowerings(event, duration, fun_name='', **kwargs):
    if event == '/jax/core/compile/jaxpr_to_mlir_module_duration' and 'evaluation' in fun_name:
      lowerings.append(duration)
  jax.monitoring.register_event_duration_secs_listener(count_lowerings)
  try:
    for epochs in (2, 3):  # a fresh run, then a resumed one, each with a newly jitted predict
      def evaluation(variables, x):
        return TinyNet().apply(variables, x, train=False)
      predicts.append(jax.jit(evaluation))
      final, _ = run(tmp_path, config(num_devices=num_devices, num_epochs=epochs,
                                      plateau_factor=0.5, plateau_patience=0), evaluate=evaluate)
      assert len(lowerings) == len(predicts)  # one program each run
    assert steps == [4, 8, 4, 12]  # (4 again: the resume measures its best checkpoint anew)
    assert float(final.opt_state.hyperparams['learning_rate']) == pytest.approx(0.025)
    best = checkpoints.restore_best(str(tmp_path), final)  # (as a task restores its best)
    predicts[-1](best.variables, data()['x'])  # as a task's test predictions run
    predicts[-1](final.variables, data()['x'])
  finally:
    jax.monitoring.unregister_event_duration_listener(count_lowerings)
  # One program serves every call: on one device the trained state's serves restored states
  # and host arrays too; a pmap run's state is committed to its first device, and its best
  # is measured there on a resume, and restored there (jit compiles a program per placement).
  assert len(lowerings) == 2


@pytest.mark.usefixtures('eight_devices')
def test_data_parallel_run_matches_one_device(tmp_path):
  history = {n: run(tmp_path / str(n), config(num_devices=n))[0] for n in (1, 4)}
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=2e-6),
               history[1].params, history[4].params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=2e-6),
               history[1].batch_stats, history[4].batch_stats)


def test_every_step_draws_its_own_randomness(tmp_path):
  # (A VAE's latent noise or a CNN's dropout masks repeated at every step would still train,
  # and resume, deterministically: only the draws themselves show it.)
  def step_with_draw(state, batch, rng, *, axis_name=None):
    state, metrics = train_step(state, batch, rng, model=TinyNet(), axis_name=axis_name)
    return state, {**metrics, 'draw': jax.random.uniform(rng)}

  loop.fit(config(), str(tmp_path), make_state(TinyNet()), step_with_draw, data())
  draws = [value for _, value in tensorboard_scalars(tmp_path)['train/draw']]
  assert len(draws) == 12 and len(set(draws)) == 12


def test_a_resume_compares_its_epochs_with_the_best_as_it_measures_it(tmp_path):
  # An older version measured the best's loss lower than this run's evaluate does (as the
  # clipped BrainCNN loss did): epoch 2 beats the best as measured now, and becomes the best.
  # The plateau compares with the same loss: had it kept the old 1.0, epochs 2 and 3 would
  # both be bad ones, and patience 0 would halve the rate twice (to 0.0125).
  cfg = functools.partial(config, plateau_factor=0.5, plateau_patience=0)
  run(tmp_path, cfg(num_epochs=1), evaluate=lambda s: {'loss': 1.0})  # best: epoch 1, 1.0
  measured = {4: 10.0, 8: 5.0, 12: 7.0}  # this version's loss of the states at each step
  final, summary = run(tmp_path, cfg(num_epochs=3),
                       evaluate=lambda s: {'loss': measured[int(s.step)]})
  assert summary['best_val_loss'] == 5.0
  assert checkpoints.manager(str(tmp_path / 'best'), 1, create=False).latest_step() == 8
  # Epoch 2 (5.0 < 10.0) is no bad epoch; epoch 3 (7.0 > 5.0) is, and halves the rate once.
  assert summary['learning_rate'] == pytest.approx(0.05 * 0.5)
  assert float(final.opt_state.hyperparams['learning_rate']) == pytest.approx(0.025)


def test_the_finiteness_check_counts_bfloat16_as_a_float():
  # numpy's issubdtype does not count ml_dtypes' bfloat16 as a float: such leaves went unchecked.
  import ml_dtypes
  from brainjax.train import loop
  assert not loop._all_finite({'w': np.array([1.0, np.inf], ml_dtypes.bfloat16)})
  assert loop._all_finite({'w': np.array([1.0, 2.0], ml_dtypes.bfloat16), 'step': np.int32(3)})


@pytest.mark.parametrize('code', [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_every_want_of_room_is_recognised_as_an_oserror_or_a_tensorstore_message(code):
  assert checkpoints.out_of_room(OSError(code, 'no room'))
  assert checkpoints.out_of_room(ValueError(f"writing failed [os_error_code='{code}']"))
  assert not checkpoints.out_of_room(OSError(errno.EACCES, 'denied'))


def test_a_reading_manager_leaves_another_process_s_save_in_flight(tmp_path):
  directory = tmp_path / 'checkpoints'
  mngr = checkpoints.manager(str(directory), 2)
  checkpoints.save(mngr, 1, {'w': np.zeros(4, np.float32)}, {'step': 1})
  checkpoints.close(mngr)
  in_flight = directory / '2.orbax-checkpoint-tmp-1234567890'  # (a training run's next save)
  (in_flight / 'state').mkdir(parents=True)
  reader = checkpoints.manager(str(directory), 1, create=False)
  assert reader.latest_step() == 1
  reader.close()
  assert in_flight.is_dir()
  assert checkpoints.latest_meta(str(tmp_path)) == (1, {'step': 1})
  assert in_flight.is_dir()


def test_a_save_cut_off_before_its_commit_is_no_checkpoint(tmp_path):
  (tmp_path / 'checkpoints' / '0.orbax-checkpoint-tmp-1234567890').mkdir(parents=True)
  assert not checkpoints.holds_checkpoint(str(tmp_path))
  (tmp_path / 'best' / '7').mkdir(parents=True)
  assert checkpoints.holds_checkpoint(str(tmp_path))


def test_restore_reads_the_step_asked_for(tmp_path):
  with checkpoints.manager(str(tmp_path / 'checkpoints'), 2) as mngr:
    for step in (1, 2):
      checkpoints.save(mngr, step, {'w': np.full(3, step, np.float32)}, {'step': step})
    checkpoints.wait(mngr)
    template = {'w': np.zeros(3, np.float32)}
    state, meta = checkpoints.restore(mngr, template, 1)
    assert meta == {'step': 1} and (np.asarray(state['w']) == 1).all()
    state, meta = checkpoints.restore(mngr, template)
    assert meta == {'step': 2} and (np.asarray(state['w']) == 2).all()
