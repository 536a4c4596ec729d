"""Ctrl-C stops a run with one line and exit code 130, even in a gc callback or a compilation."""
import gc
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

from brainjax import interrupts
from brainjax import threads

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def resending_hook():
  """The hook launch.py installs, around this test's own (pytest keeps one per test), and
  Python's own SIGINT handler (pytest may run where SIGINT is ignored, e.g. in the
  background of a script)."""
  previous_hook = sys.unraisablehook
  previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
  sys.unraisablehook = interrupts.resend_dropped_ctrl_c(previous_hook)
  yield
  sys.unraisablehook = previous_hook
  signal.signal(signal.SIGINT, previous_handler)


def _wait_for_interrupt(seconds=2.0):
  end = time.monotonic() + seconds
  while time.monotonic() < end:
    time.sleep(0.001)


def _press_ctrl_c_in_a_gc_callback():
  calls = []

  def press_ctrl_c(phase, info):  # as JAX's callback runs at every collection
    del info
    if phase == 'start' and not calls:
      calls.append(phase)
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.01)  # Python handles the signal here, inside the callback

  gc.callbacks.append(press_ctrl_c)
  try:
    gc.collect()  # (where Python drops the KeyboardInterrupt)
  finally:
    gc.callbacks.remove(press_ctrl_c)
  assert calls == ['start']


@pytest.mark.usefixtures('resending_hook')
def test_a_ctrl_c_inside_a_gc_callback_interrupts_after_it():
  with pytest.raises(KeyboardInterrupt):
    _press_ctrl_c_in_a_gc_callback()
    _wait_for_interrupt()


@pytest.mark.usefixtures('resending_hook')
def test_the_resent_ctrl_c_wakes_a_main_thread_that_waits():
  with pytest.raises(KeyboardInterrupt):
    _press_ctrl_c_in_a_gc_callback()
    start = time.monotonic()
    try:
      threading.Event().wait(5)  # as the main thread waits for worker threads or processes
    finally:
      assert time.monotonic() - start < 1


# A task whose Ctrl-C lands in an XLA compilation, which goes on in its own thread after
# Python gets the KeyboardInterrupt.
_INTERRUPTED_COMPILE = """
import os, signal, sys, threading
from absl import app
import jax
import jax.numpy as jnp
import launch
from brainjax.tasks import vae_gen

def slow_to_compile(x):
  for i in range(500):  # (seconds to compile: the Ctrl-C comes at 0.5 s)
    x = jnp.sin(x) @ x + i
  return x

def compile_and_press_ctrl_c(config, workdir):
  threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
  jax.jit(slow_to_compile).lower(jnp.ones((8, 8))).compile()
  raise AssertionError('the compilation was not interrupted')

vae_gen.train_and_evaluate = compile_and_press_ctrl_c
signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in a terminal's foreground)
sys.argv = ['launch.py', '--config=configs/vae_gen.py:positive,smoke', '--workdir=' + sys.argv[1]]
app.run(launch.main, flags_parser=launch.parse_flags)
"""


def test_a_ctrl_c_during_a_compilation_exits_as_interrupted(tmp_path):
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE='false')  # (it must compile, every time)
  result = subprocess.run([sys.executable, '-c', _INTERRUPTED_COMPILE, str(tmp_path / 'run')],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 130, result.stderr[-2000:]  # (was a segmentation fault, -11)
  assert 'Interrupted: the same command goes on with' in result.stderr


# Preprocessing in worker processes: a terminal's Ctrl-C goes to the whole process group.
_PREPROCESSING = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in a terminal's foreground)
import jax  # (as launch.py: JAX's threads in the parent; the workers do not run this script)
from brainjax.data import sources

if __name__ == '__main__':
  jobs = [('phantom', f'phantom_{i}.png', i % 2, (0, i)) for i in range(400)]
  try:
    sources._run_jobs(jobs, 64, 0.05)
  except KeyboardInterrupt:
    sys.exit(130)
  sys.exit('the preprocessing was not interrupted')
"""


def _children(pid):
  try:
    with open(f'/proc/{pid}/task/{pid}/children') as f:
      return [int(child) for child in f.read().split()]
  except FileNotFoundError:  # (it has ended)
    return []


def _running(pid):
  """Not ended (an ended orphan stays a zombie until PID 1 reaps it, which may be slow)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not os.path.exists('/proc/self/task'), reason='reads /proc (Linux)')
@pytest.mark.skipif(threads.num_workers() < 2, reason='one core: preprocessing has no workers')
def test_a_ctrl_c_to_the_process_group_stops_the_preprocessing_workers_quietly(tmp_path):
  script = tmp_path / 'preprocess.py'  # (a main script's file, as launch.py's)
  script.write_text(_PREPROCESSING)
  env = dict(os.environ, PYTHONPATH=str(REPO))
  run = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env,
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
  try:
    deadline = time.monotonic() + 120
    while (run.poll() is None and len(_children(run.pid)) < 3  # 2 workers, a tracker
           and time.monotonic() < deadline):
      time.sleep(0.05)
    workers = _children(run.pid)
    assert len(workers) >= 3, f'no worker processes started (exit code {run.poll()})'
    time.sleep(0.5)  # (the workers are starting: importing sources)
    os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, stderr = run.communicate(timeout=60)
  finally:
    if run.poll() is None:
      os.killpg(run.pid, signal.SIGKILL)
  assert run.returncode == 130, stderr[-2000:]
  assert 'Traceback' not in stderr and 'Exception' not in stderr, stderr[-2000:]
  time.sleep(1)
  assert not [pid for pid in workers if _running(pid)]


def test_other_unraisable_exceptions_reach_the_previous_hook():
  seen = []
  hook = interrupts.resend_dropped_ctrl_c(seen.append)
  unraisable = types.SimpleNamespace(exc_type=ValueError, exc_value=ValueError('in __del__'),
                                     exc_traceback=None, err_msg=None, object=None)
  hook(unraisable)
  assert seen == [unraisable]
