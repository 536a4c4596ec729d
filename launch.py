"""Runs one brainjax task: `python launch.py --config=configs/vae_gen.py:positive`.

The config's `task` field picks the runner (brainjax/tasks/<task>.py); its
`train_and_evaluate(config, workdir)` does the work and writes <workdir>/metrics.json.
"""
import signal

if __name__ == '__main__':
  # Ctrl-C waits, blocked, until main() has imported the task, instead of raising in imports: a
  # KeyboardInterrupt raised in an extension module's initialisation becomes an ImportError,
  # which libraries' optional imports catch, and the run went on as if it had not been pressed
  # (for a Ctrl-C 0.2-0.8 s after the start, here).
  signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])

import importlib
import json
import logging as std_logging
import os
import re
import sys
import time
import traceback
import types

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from brainjax import interrupts
from brainjax.train import checkpoints
from brainjax.train import parallel
from brainjax.train import reruns
from brainjax.train import run_setup

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, summaries and metrics.json go '
                    '(default: runs/<config name>). Re-running with the same workdir resumes.')
config_flags.DEFINE_config_file('config', None, 'A config file and its options, e.g. '
                                'configs/cnn_cls.py:real,smoke', lock_config=True)
flags.mark_flags_as_required(['config'])


def parse_flags(argv):
  """absl flag parsing, but a bad config string or override is one line, not a traceback."""
  given = ' '.join(argv[1:])
  config_files = _config_files(argv)
  if len(config_files) > 1:  # (absl would load the last, which the checks here did not see)
    sys.exit(f'error: --config is given {len(config_files)} times: give one (in: {given})')
  config_file = config_files[0] if config_files else None
  if config_file and not os.path.isfile(config_file):
    sys.exit(f'error: no config file {config_file} (in: {given})')
  try:
    remaining = FLAGS(argv)
    FLAGS.config.task  # pylint: disable=pointless-statement  # a failed load raises here
  except (KeyError, AttributeError) as error:
    # An override of a field the config lacks, or the config file's own code failing.
    detail = error
    while isinstance(detail, BaseException) and detail.args:  # (a KeyError in an AttributeError)
      detail = detail.args[0]
    detail = ' '.join(str(detail).split())  # one line
    module = getattr(error, 'obj', None)
    if (isinstance(module, types.ModuleType) and error.name == 'get_config'
        and config_file == os.path.abspath(getattr(module, '__file__', '') or '')):
      sys.exit(f'error: the config file defines no get_config() (in: {given})')
    overridden = [name for a in argv if a.startswith('--config.')  # (each part of a.b.c)
                  for name in a.split('=')[0][len('--config.'):].split('.')]
    if isinstance(module, types.ModuleType) or not any(f in detail for f in overridden):
      sys.exit(f'error: the config file failed: {detail} (in: {given})')
    detail = detail.replace(' Did you mean', '; did you mean')  # (ml_collections' hint)
    sys.exit(f'error: unknown config field {detail} (in: {given})')
  except (SyntaxError, NameError) as error:  # e.g. a run's config.json given as --config
    hint = ('' if (config_file or '').endswith('.py') else
            'a config is a Python file with get_config(), e.g. configs/cnn_cls.py; ')
    sys.exit(f'error: the config file failed: {type(error).__name__}: {error} ({hint}in: '
             f'{given})')
  except (flags.Error, OSError, ValueError, TypeError) as error:
    last_line = str(error).strip().splitlines()[-1].strip()  # config errors embed a traceback
    last_line = last_line.removeprefix('ValueError: ')  # (a config's own refusal)
    sys.exit(f'error: {last_line} (in: {given})')
  overrides = config_flags.get_override_values(FLAGS['config'])
  if 'task' in overrides:
    # (Each config file holds one task's fields: another task would fail deep in its code.)
    sys.exit(f'error: --config.task cannot be changed: the config file sets it; use '
             f'configs/<task>.py (in: {given})')
  for name, value in overrides.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      # (--config.data={...} replaces the whole group: its other fields were lost, a traceback
      # where the code read one, or a network silently at its built-in sizes)
      sys.exit(f'error: --config.{name}={{...}} would replace every field of {name}: set them '
               f'one at a time, e.g. --config.{name}.<field>=<value> (in: {given})')
  return remaining


def _config_files(argv):
  """The absolute paths of the files argv's --config flags name."""
  files = []
  for i, arg in enumerate(argv):
    # (absl takes -config as --config)
    value = (arg.split('=', 1)[1] if arg.startswith(('--config=', '-config=')) else
             argv[i + 1] if arg in ('--config', '-config') and i + 1 < len(argv) else None)
    if value:
      files.append(os.path.abspath(value.split(':')[0]))
  return files


# A save a Ctrl-C stopped as it began, whose thread found the manager closed by the run's exit
# (its temporary folder is replaced by the resumed run's save).
_SAVE_AFTER_CLOSE = 'cannot schedule new futures after shutdown'


def quiet_libraries(record):
  """Keeps out of the run log: JAX's note of each backend it tried and, as meant, skipped
  quietly (on a machine without a TPU: "Unable to initialize backend 'tpu': ... Failed to open
  libtpu.so"; the run logs the devices it uses); Orbax's per-save INFO chatter (its warnings
  still show), and its error log, traceback included, of a wait for a save that a Ctrl-C stopped
  (the run says it was interrupted; the resumed run replaces the unfinished save), or of one
  that a Ctrl-C stopped as it began (its thread found the manager closed), or of a save
  that found no room to write (a full disk: each of its threads logs the failure, some 190
  lines; the run ends with one line naming the folder, its traceback with --verbosity=1);
  TFDS's warning that a folder it looks into holds no prepared copy yet, which it does not
  while brainjax prepares Br35H there; Orbax's warning that a save waited for the one before,
  which counts the time since that save that the loop itself waited for it (a best checkpoint
  commits before the latest, loop._Saves), not a save running into the next ("took 1.1
  seconds ... consider checkpointing less frequently", once a minute on Br35H's BrainCNN)."""
  if record.name.startswith('jax.') and record.levelno < std_logging.WARNING:
    return not str(record.msg).startswith('Unable to initialize backend')
  if '/tensorflow_datasets/' in record.pathname:  # (twice as a Br35H copy is first prepared)
    return not str(record.msg).startswith('Variant folder')
  if '/orbax/' not in record.pathname:
    return True
  if record.exc_info and (isinstance(record.exc_info[1], KeyboardInterrupt)
                          or checkpoints.out_of_room(record.exc_info[1])
                          or str(record.exc_info[1]) == _SAVE_AFTER_CLOSE):
    return False
  if str(record.msg).startswith('Waiting for previous save to complete took'):
    return False  # (our own wait, see the docstring)
  return record.levelno >= std_logging.WARNING


def quiet_late_reads(previous_hook):
  """A sys.unraisablehook that drops the "Event loop is closed" errors of tensorstore reads
  completing after Orbax gave up restoring a damaged checkpoint (one traceback per array,
  around the run's one-line error); it passes every other one to previous_hook."""
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous_hook(unraisable)
  return hook


def initialize_hosts(environ):
  """jax.distributed.initialize() for one host of a multi-host run.

  The cluster comes from TPU, SLURM or MPI detection, or from JAX_COORDINATOR_ADDRESS with
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (jax reads the first itself, not the other two).
  """
  def number(name):
    return int(environ[name]) if environ.get(name) else None
  address = environ.get('JAX_COORDINATOR_ADDRESS')
  if address and not re.fullmatch(r'.+:[0-9]+', address):  # (jax: an IndexError traceback)
    sys.exit(f'error: --config.multihost: JAX_COORDINATOR_ADDRESS={address!r} is not host:port')
  if address:  # (jax waits 5 minutes for the others in silence, then aborts)
    logging.info('Joining %s processes at %s (jax.distributed waits up to 5 minutes for all).',
                 environ.get('JAX_NUM_PROCESSES') or 'the', address)
  try:
    jax.distributed.initialize(num_processes=number('JAX_NUM_PROCESSES'),
                               process_id=number('JAX_PROCESS_ID'))
  except ValueError as error:  # no cluster found
    sys.exit(f'error: --config.multihost: {error} Set JAX_COORDINATOR_ADDRESS (host:port), '
             'JAX_NUM_PROCESSES and JAX_PROCESS_ID, or run under TPU, SLURM or MPI.')


def exit_now(code):
  """Exits at once, without the interpreter's teardown (atexit handlers, among them JAX's
  backend and jax.distributed shutdown; finalizers): call it once the run's files are closed.

  An XLA compilation that a Ctrl-C interrupts returns to Python at once but goes on in a
  thread of its own; tearing the interpreter down beside it ends in a segmentation fault.
  """
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def host_settings(config):
  """Each setting as text, paths as resolved, but the cache folder: a host may keep its own."""
  return {name: json.dumps(value, sort_keys=True)
          for name, value in reruns.flat_fields(json.loads(config.to_json_best_effort())).items()
          if name.split('.')[-1] != 'cache_dir'}


def set_up(config, task):
  """(workdir, the config.json text it held or None, the folders launch made for it), once the
  hosts are joined and the settings checked; a refused setting exits with one line."""
  if config.get('multihost'):
    initialize_hosts(os.environ)
    try:
      parallel.check_device_counts()
    except ValueError as error:
      sys.exit(f'error: --config.multihost: {error}')
  try:
    workdir = run_setup.resolve_paths(config, FLAGS.workdir)
    cache = run_setup.check_settings(config, task)
    # Compiled programs are cached on disk: a study's stages (and reruns) that train the same
    # network reuse them instead of recompiling. JAX looks every program up there; those that
    # took 0.2 s or more to compile are written (the samplers and initialisations compile in
    # 0.5-2 s on a CPU: at 1 s some were compiled again by every run; loaded, 0.05 s).
    jax.config.update('jax_compilation_cache_dir', os.path.join(cache, 'xla'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
  except (ValueError, OSError) as error:  # (OSError: e.g. a file where the folder would be)
    parallel.check_all_hosts_agree(refused=True)
    sys.exit(f'error: {error}')
  try:  # (a setting one host refused stops all; so do settings that differ, before any folder)
    parallel.check_all_hosts_agree(refused=False)
    parallel.check_same_settings(host_settings(config))
  except ValueError as error:
    sys.exit(f'error: {error}')
  try:
    previous_config, made = run_setup.prepare_workdir(config, workdir)
  except (ValueError, OSError) as error:
    parallel.check_all_hosts_agree(refused=True)
    sys.exit(f'error: {error}')
  try:  # (a workdir the first host refused stops all)
    parallel.check_all_hosts_agree(refused=False)
  except ValueError as error:
    run_setup.after_failure(workdir, previous_config, made, time.time(), error)
    sys.exit(f'error: {error}')
  # (what the host has; training logs how many of them it uses, num_devices)
  logging.info('Task %s, workdir %s; this host has %d %s device(s).', config.task, workdir,
               jax.local_device_count(), jax.devices()[0].platform)
  return workdir, previous_config, made


def main(argv):
  logging.get_absl_handler().addFilter(quiet_libraries)  # (the handler: JAX logs by name)
  # Exceptions Python can only print ("Exception ignored in ..."): a Ctrl-C there is sent
  # again, and Orbax's late reads after a failed restore are not printed.
  sys.unraisablehook = interrupts.resend_dropped_ctrl_c(quiet_late_reads(sys.unraisablehook))
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  if config.task not in run_setup.TASKS:
    raise app.UsageError(f'unknown task {config.task!r}; known: {", ".join(run_setup.TASKS)}')
  if config.get('multihost') and config.task == 'predict':  # (every host would write the same)
    sys.exit('error: predict runs on one host; drop --config.multihost')
  # (Imported before jax.distributed.initialize, which no import here needs to follow: they
  # touch no backend. Up to 1 s of imports, while a Ctrl-C is still held.)
  task = importlib.import_module(f'brainjax.tasks.{config.task}')
  try:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])  # (a Ctrl-C held: raised here)
    workdir, previous_config, made = set_up(config, task)
  except KeyboardInterrupt:  # (e.g. while the hosts wait for each other)
    print('Interrupted before the run started.', file=sys.stderr)
    exit_now(130)
  start = time.time()
  try:
    metrics = task.train_and_evaluate(config, workdir)
    parallel.wait_for_all_hosts('done')  # (jax's exit waits 5 minutes at most for a late host)
  except (ValueError, OSError, FloatingPointError, KeyboardInterrupt) as error:
    # A bad input or setting, or a path that cannot be written (a file where a folder is
    # wanted, a full disk), is the user's to fix: one line (the traceback with --verbosity=1).
    logging.debug('Traceback:', exc_info=True)
    run_setup.after_failure(workdir, previous_config, made, start, error)
    if isinstance(error, KeyboardInterrupt):  # (Ctrl-C: the checkpoints written so far are whole)
      print(f'Interrupted: the same command goes on with {workdir} from where it stopped (its '
            'last checkpoint, if any).', file=sys.stderr)
      exit_now(130)  # (128 + SIGINT, as a shell reports it)
    if jax.process_count() > 1:
      # The other hosts wait for this one in a collective: the interpreter's exit held it in
      # jax.distributed's shutdown barrier for 5 minutes, then aborted every host. Leaving at
      # once, it closes its connections, and the others stop within seconds (a Gloo error).
      print(f'error: {error}', file=sys.stderr)
      exit_now(1)
    sys.exit(f'error: {error}')
  except Exception:  # (a bug: its traceback, and on several hosts the same prompt exit)
    if jax.process_count() > 1:
      traceback.print_exc()
      exit_now(1)
    raise
  run_setup.after_success(workdir)
  logging.info('Done: %s/metrics.json (%d values).', workdir, len(metrics))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
