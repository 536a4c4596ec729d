"""Multi-host training: two processes on this machine (`jax.distributed` over localhost)
train, checkpoint and resume exactly as one process with all their devices."""
import functools
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from test_loop import REPO, config, predict_and_improve, run

# One host of two: test_loop's TinyNet on 2 of its CPU devices, 4 in all. Every epoch is a new
# best, so the best checkpoint and the latest are saved together, as hosts must do in step.
_HOST = """
import sys
import jax
process_id, port, workdir, num_epochs = sys.argv[1:]
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=int(process_id))
import numpy as np
sys.path.insert(0, 'tests')
import test_loop
step = test_loop.train_step
def traced_step(state, batch, rng, **kwargs):  # says, once traced, how big a device's share is
  print('examples per device:', batch['x'].shape[0], flush=True)
  return step(state, batch, rng, **kwargs)
test_loop.train_step = traced_step
steps = []
final, summary = test_loop.run(workdir, test_loop.config(num_devices=2, num_epochs=int(num_epochs)),
                               hooks=[steps.append], evaluate=test_loop.predict_and_improve)
np.savez(f'{workdir}/final_{process_id}.npz', steps=steps, *jax.tree.leaves(final))
"""


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _two_hosts(command, env, timeout):
  """Runs command(i) with environment env(i) as host i of two; their logs once both succeed."""
  hosts = [subprocess.Popen(command(i), cwd=REPO, env=env(i), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    logs = [host.communicate(timeout=timeout)[0] for host in hosts]
  finally:
    for host in hosts:
      host.kill()
  for host, log in zip(hosts, logs):
    assert host.returncode == 0, log[-3000:]
  return logs


def _run_two_hosts(workdir, num_epochs):
  """Both processes' final states (as leaf lists), the steps each took, and their logs."""
  port = _free_port()
  logs = _two_hosts(
      lambda i: [sys.executable, '-c', _HOST, str(i), str(port), str(workdir), str(num_epochs)],
      lambda i: {**os.environ, 'JAX_PLATFORMS': 'cpu'}, timeout=600)
  finals = [np.load(workdir / f'final_{i}.npz') for i in range(2)]
  return ([[f[f'arr_{k}'] for k in range(len(f.files) - 1)] for f in finals],
          [f['steps'].tolist() for f in finals], logs)


@pytest.mark.usefixtures('eight_devices')
def test_two_hosts_train_and_resume_as_one_host_with_their_devices(tmp_path):
  reference, _ = run(tmp_path / 'one', config(num_devices=4, num_epochs=3),
                     evaluate=predict_and_improve)
  _run_two_hosts(tmp_path / 'two', num_epochs=2)  # then run on, resumed, to 3 epochs
  finals, steps, logs = _run_two_hosts(tmp_path / 'two', num_epochs=3)

  assert steps == [[9, 10, 11, 12]] * 2  # resumed after epoch 2
  for log in logs:  # the global batch of 16 split across all 4 devices, not each host's 2
    assert 'examples per device: 4' in log and 'examples per device: 8' not in log
  close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
  for final in finals:  # each host holds the whole state, the same as one process's
    jax.tree.map(close, final, jax.tree.leaves(reference))
  # Only the first host writes TensorBoard files: one for each of the two runs.
  assert len(os.listdir(tmp_path / 'two' / 'tensorboard')) == 2


def _launch_two_hosts(workdir, *args):
  """launch.py as two hosts of a `--config.multihost=True` run; returns their outputs."""
  port = _free_port()
  return _two_hosts(
      lambda i: [sys.executable, 'launch.py', *args, '--config.multihost=True',
                 f'--workdir={workdir}'],
      lambda i: {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_COORDINATOR_ADDRESS':
                 f'localhost:{port}', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(i)},
      timeout=900)


@pytest.mark.slow  # two BrainCVAE runs and the anomaly rules, three processes: a minute or two
def test_two_hosts_through_launch_write_one_run_equal_to_one_host(tmp_path):
  args = ['--config=configs/cvae_cls.py:real,smoke', f'--config.cache_dir={tmp_path}/cache']
  one = subprocess.run([sys.executable, 'launch.py', *args, '--config.num_devices=2',
                        f'--workdir={tmp_path}/one'], cwd=REPO, capture_output=True,
                       text=True, timeout=900)
  assert one.returncode == 0, one.stderr[-3000:]
  logs = _launch_two_hosts(tmp_path / 'two', *args, '--config.num_devices=1')

  assert all('on 2 device(s) of 2 process(es)' in log for log in logs)
  ours = sorted(p.name for p in (tmp_path / 'two').iterdir())
  assert ours == sorted(p.name for p in (tmp_path / 'one').iterdir())  # config.json, figures/, ...
  assert len(os.listdir(tmp_path / 'two' / 'tensorboard')) == 1
  expected = json.load(open(tmp_path / 'one' / 'metrics.json'))
  got = json.load(open(tmp_path / 'two' / 'metrics.json'))
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    if isinstance(value, str) or value is None:
      assert got[key] == value, key
    elif not key.endswith(('_seconds', '_per_s')):  # (timings differ)
      assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def _launch_two_hosts_apart(workdir, args, programs=(['launch.py'],) * 2, timeout=300,
                            envs=({}, {})):
  """launch.py (or programs[i]) as two hosts, host i with args[i] (and environment envs[i]),
  whatever their exit; (returncode, output)."""
  port = _free_port()
  hosts = [subprocess.Popen(
      [sys.executable, *program, *host_args, '--config.multihost=True', f'--workdir={workdir}'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_COORDINATOR_ADDRESS': f'localhost:{port}',
           'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(i), **env})
           for i, (program, host_args, env) in enumerate(zip(programs, args, envs))]
  try:
    return [(host.communicate(timeout=timeout)[0], host.returncode)[::-1] for host in hosts]
  finally:
    for host in hosts:
      host.kill()


def test_a_run_one_host_refuses_stops_every_host_with_one_line(tmp_path):
  # Only the first host checks the workdir: it refused a folder of another's files and left,
  # while the second trained on, until a Gloo timeout's traceback half a minute later.
  args = ['--config=configs/vae_gen.py:positive,smoke', f'--config.cache_dir={tmp_path}/cache',
          '--config.num_devices=1']
  (tmp_path / 'theirs').mkdir()
  (tmp_path / 'theirs' / 'notes.txt').write_text('mine')
  (code0, log0), (code1, log1) = _launch_two_hosts_apart(tmp_path / 'theirs', [args, args])
  assert code0 == code1 == 1 and 'Traceback' not in log0 + log1
  assert 'holds notes.txt but no config.json' in log0
  assert 'error: host 0 refused the run; its log says why' in log1
  assert [p.name for p in (tmp_path / 'theirs').iterdir()] == ['notes.txt']
  # A setting only the second host refuses: the first, which had made the workdir, removes it.
  (code0, log0), (code1, log1) = _launch_two_hosts_apart(
      tmp_path / 'new', [args, args + ['--config.learning_rate=0']])
  assert code0 == code1 == 1 and 'Traceback' not in log0 + log1
  assert 'error: host 1 refused the run; its log says why' in log0
  assert 'learning_rate' in log1
  assert not (tmp_path / 'new').exists()


def test_hosts_with_other_settings_or_device_counts_stop_with_one_line(tmp_path):
  # Another num_devices on one host: each trained its own device list until a Gloo timeout's
  # traceback; another device count: a reshape error on one host, a traceback on the other.
  args = ['--config=configs/vae_gen.py:positive,smoke', f'--config.cache_dir={tmp_path}/cache']
  (code0, log0), (code1, log1) = _launch_two_hosts_apart(
      tmp_path / 'new', [args + ['--config.num_devices=1'], args + ['--config.num_devices=2']])
  assert code0 == code1 == 1 and 'Traceback' not in log0 + log1
  for log in (log0, log1):
    assert log.strip().splitlines()[-1] == ('error: host 1 runs with other settings than host 0 '
                                            '(num_devices): run the same command on every host')
  assert not (tmp_path / 'new').exists()
  fewer = {'XLA_FLAGS': os.environ.get('XLA_FLAGS', '')
                        + ' --xla_force_host_platform_device_count=2'}
  (code0, log0), (code1, log1) = _launch_two_hosts_apart(
      tmp_path / 'new', [args + ['--config.num_devices=1']] * 2, envs=({}, fewer))
  assert code0 == code1 == 1 and 'Traceback' not in log0 + log1
  for log in (log0, log1):
    assert log.strip().splitlines()[-1] == (
        'error: --config.multihost: the hosts have different numbers of devices (host 0: 8, '
        'host 1: 2); give each as many'), log[-2000:]


def test_the_settings_hosts_compare_leave_out_their_cache_folders(tmp_path):
  # (a cache on each node's own disk is a valid setup; the data folder is compared as
  # resolve_paths left it, absolute)
  import launch  # pylint: disable=import-outside-toplevel  (it defines absl flags)
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({'cache_dir': '/a', 'seed': 0,
                                      'data': {'data_dir': '/d', 'cache_dir': '/b'}})
  assert launch.host_settings(config) == {'seed': '0', 'data.data_dir': '"/d"'}


def test_a_coordinator_address_without_a_port_is_one_line():
  import launch  # pylint: disable=import-outside-toplevel  (it defines absl flags)
  with pytest.raises(SystemExit, match=r"JAX_COORDINATOR_ADDRESS='10.0.0.5' is not host:port"):
    launch.initialize_hosts({'JAX_COORDINATOR_ADDRESS': '10.0.0.5', 'JAX_NUM_PROCESSES': '2',
                             'JAX_PROCESS_ID': '0'})


def test_a_setting_the_first_host_alone_refuses_leaves_no_workdir_the_others_made(tmp_path):
  # The second host made the new workdir (every host does, before the first writes in it);
  # the first refused a setting, so neither its config.json nor its removal came.
  args = ['--config=configs/vae_gen.py:positive,smoke', f'--config.cache_dir={tmp_path}/cache',
          '--config.num_devices=1']
  (code0, log0), (code1, log1) = _launch_two_hosts_apart(
      tmp_path / 'new' / 'run', [args + ['--config.learning_rate=0'], args])
  assert code0 == code1 == 1 and 'Traceback' not in log0 + log1
  assert 'learning_rate' in log0
  assert 'error: host 0 refused the run; its log says why' in log1
  assert not (tmp_path / 'new').exists()


# launch.py as a host whose second sample grid fails (host 0 alone writes them) with the
# error argv[1] names.
_FAILING_HOST = """
import sys
from absl import app
import launch
from brainjax.train import reporting
error = {'full_disk': OSError(28, 'No space left on device'), 'bug': RuntimeError('a bug')}[
    sys.argv.pop(1)]
save_image_grid, grids = reporting.save_image_grid, []
def save_or_fail(path, images):
  grids.append(path)
  if len(grids) == 2:
    raise error
  return save_image_grid(path, images)
reporting.save_image_grid = save_or_fail
sys.argv = ['launch.py', *sys.argv[1:]]
app.run(launch.main, flags_parser=launch.parse_flags)
"""


@pytest.mark.parametrize('failure, last_line', [
    ('full_disk', 'error: [Errno 28] No space left on device'),
    ('bug', 'RuntimeError: a bug')])
def test_a_host_failing_mid_run_stops_every_host_within_seconds(tmp_path, failure, last_line):
  # It waited 5 minutes in jax.distributed's shutdown barrier, the other in a collective, and
  # both then aborted with a C++ stack dump.
  args = ['--config=configs/vae_gen.py:positive,smoke', f'--config.cache_dir={tmp_path}/cache',
          '--config.num_devices=1', '--config.num_epochs=6']
  (code0, log0), (code1, log1) = _launch_two_hosts_apart(
      tmp_path / 'run', [args, args], programs=(['-c', _FAILING_HOST, failure], ['launch.py']),
      timeout=120)
  assert code0 == 1 and log0.strip().splitlines()[-1] == last_line, log0[-3000:]
  assert ('Traceback' in log0) == (failure == 'bug')  # (a bug's traceback, else one line)
  assert code1 != 0 and 'step 2/12' in log1, log1[-3000:]  # (it had trained beside host 0)
