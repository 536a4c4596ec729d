"""Runs one brainjax task: `python launch.py --config=configs/vae_gen.py:positive`.

The config's `task` field picks the runner (brainjax/tasks/<task>.py); its
`train_and_evaluate(config, workdir)` does the work and writes <workdir>/metrics.json.
"""
import importlib
import logging as std_logging
import os
import sys
import time
import types

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from brainjax import interrupts
from brainjax.data import layout
from brainjax.data import sources
from brainjax.tasks import datasets
from brainjax.train import checkpoints
from brainjax.train import parallel
from brainjax.train import reruns
from configs import common

TRAINING_TASKS = ('vae_gen', 'gan_gen', 'cnn_cls', 'cvae_cls')  # their batch splits across devices
TASKS = TRAINING_TASKS + ('study', 'predict')

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, summaries and metrics.json go '
                    '(default: runs/<config name>). Re-running with the same workdir resumes.')
config_flags.DEFINE_config_file('config', None, 'A config file and its options, e.g. '
                                'configs/cnn_cls.py:real,smoke', lock_config=True)
flags.mark_flags_as_required(['config'])


def parse_flags(argv):
  """absl flag parsing, but a bad config string or override is one line, not a traceback."""
  given = ' '.join(argv[1:])
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
        and _config_file(argv) == os.path.abspath(getattr(module, '__file__', '') or '')):
      sys.exit(f'error: the config file defines no get_config() (in: {given})')
    overridden = [name for a in argv if a.startswith('--config.')  # (each part of a.b.c)
                  for name in a.split('=')[0][len('--config.'):].split('.')]
    if isinstance(module, types.ModuleType) or not any(f in detail for f in overridden):
      sys.exit(f'error: the config file failed: {detail} (in: {given})')
    sys.exit(f'error: unknown config field {detail} (in: {given})')
  except (SyntaxError, NameError) as error:  # e.g. a run's config.json given as --config
    hint = ('' if (_config_file(argv) or '').endswith('.py') else
            'a config is a Python file with get_config(), e.g. configs/cnn_cls.py; ')
    sys.exit(f'error: the config file failed: {type(error).__name__}: {error} ({hint}in: '
             f'{given})')
  except (flags.Error, OSError, ValueError, TypeError) as error:
    last_line = str(error).strip().splitlines()[-1].strip()  # config errors embed a traceback
    sys.exit(f'error: {last_line} (in: {given})')
  if 'task' in config_flags.get_override_values(FLAGS['config']):
    # (Each config file holds one task's fields: another task would fail deep in its code.)
    sys.exit(f'error: --config.task cannot be changed: the config file sets it; use '
             f'configs/<task>.py (in: {given})')
  return remaining


def _config_file(argv):
  """The absolute path of the file that argv's --config names (None if none)."""
  for i, arg in enumerate(argv):
    value = (arg.split('=', 1)[1] if arg.startswith('--config=') else
             argv[i + 1] if arg == '--config' and i + 1 < len(argv) else None)
    if value:
      return os.path.abspath(value.split(':')[0])
  return None


def quiet_libraries(record):
  """Keeps out of the run log: JAX's note of each backend it tried and, as meant, skipped
  quietly (on a machine without a TPU: "Unable to initialize backend 'tpu': ... Failed to open
  libtpu.so"; the run logs the devices it uses); Orbax's per-save INFO chatter (its warnings
  still show), and its error log, traceback included, of a wait for a save that a Ctrl-C stopped
  (the run says it was interrupted; the resumed run replaces the unfinished save) or of a save
  that found no room to write (a full disk: each of its threads logs the failure, some 190
  lines; the run ends with one line naming the folder, its traceback with --verbosity=1)."""
  if record.name.startswith('jax.') and record.levelno < std_logging.WARNING:
    return not str(record.msg).startswith('Unable to initialize backend')
  if '/orbax/' not in record.pathname:
    return True
  if record.exc_info and (isinstance(record.exc_info[1], KeyboardInterrupt)
                          or checkpoints.out_of_room(record.exc_info[1])):
    return False
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
  try:
    jax.distributed.initialize(num_processes=number('JAX_NUM_PROCESSES'),
                               process_id=number('JAX_PROCESS_ID'))
  except ValueError as error:  # no cluster found
    sys.exit(f'error: --config.multihost: {error} Set JAX_COORDINATOR_ADDRESS (host:port), '
             'JAX_NUM_PROCESSES and JAX_PROCESS_ID, or run under TPU, SLURM or MPI.')


def cache_problem(cache):
  """Why the cache folder could not be made ('' if it can), found without making it (it may
  lie inside the workdir, which must be empty until the run writes its config.json)."""
  if os.path.exists(cache):
    return '' if os.path.isdir(cache) else 'it is a file'
  if os.path.lexists(cache):  # (a link to nothing: makedirs says only 'File exists')
    return 'it is a link to nothing'
  parent = os.path.dirname(os.path.abspath(cache))
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.exists(parent):
    return f'{parent} is a link to nothing'
  if not os.path.isdir(parent):
    return f'{parent} is a file'
  return '' if os.access(parent, os.W_OK | os.X_OK) else f'{parent} is not writable'


def _expand_home(tree):
  """Expands a leading ~ in every string setting, and in each part of a comma-separated one
  (synthetic_dirs): a shell leaves `--workdir=~/x` and `--config.input=~/x` as they are, and a
  folder named `~` would be made or looked for."""
  for key, value in tree.items():
    if isinstance(value, str) and '~' in value:
      tree[key] = ','.join(os.path.expanduser(part) for part in value.split(','))
    elif hasattr(value, 'items'):
      _expand_home(value)


def resolve_paths(config, workdir):
  """The workdir (default runs/<config name>), with config's paths as the user means them: `~`
  expanded everywhere, the data folder made absolute (a run resumed from another folder, or
  naming the same folder otherwise, is the same run). A ValueError for a path Orbax or XLA
  cannot take (one that is not UTF-8), for a workdir, cache or export inside the data
  folder: the run would write into the user's data, and read its own files as slices, and for
  an export in or around the workdir other than its default, <workdir>/synthetic."""
  _expand_home(config)
  if workdir is not None and not workdir.strip():  # (e.g. --workdir=$DIR, DIR unset)
    raise ValueError('--workdir is empty: name a folder, or leave the flag out for runs/'
                     f'{config.name}')
  if workdir is None and not config.name.strip():  # (the default would be runs/ itself)
    raise ValueError('--config.name is empty: name the run, or give --workdir')
  workdir = os.path.expanduser(workdir or os.path.join('runs', config.name))
  written = {'--workdir': workdir, 'cache_dir': datasets.cache_dir(config)}
  if config.get('model_dir'):
    written['model_dir'] = config.model_dir  # (read by Orbax)
  if config.get('export') and config.export.get('dir'):
    written['export.dir'] = config.export.dir
  for name, path in written.items():
    try:
      os.fsencode(path).decode('utf-8')
    except UnicodeDecodeError:
      raise ValueError(f'{name} {path!r} is not valid UTF-8, which Orbax and XLA need: '
                       'rename it') from None
  export_dir = written.get('export.dir')
  if export_dir and (os.path.realpath(export_dir)
                     != os.path.realpath(os.path.join(workdir, 'synthetic'))):
    if layout.is_inside(export_dir, workdir) or layout.is_inside(workdir, export_dir):
      # (the export refuses a folder of other files: it did so once the model had trained)
      raise ValueError(f'export.dir {export_dir} and --workdir {workdir} overlap: the export '
                       'would find the run\'s own files there; leave export.dir empty (for '
                       '<workdir>/synthetic) or choose a folder outside the workdir')
  data_dir = config.get('data', {}).get('data_dir')
  if data_dir:
    config.data.data_dir = data_dir = os.path.abspath(data_dir)
    if os.path.isdir(data_dir):
      for name, path in written.items():
        if name != 'model_dir' and layout.is_inside(path, data_dir):
          raise ValueError(f'{name} {path} is inside the data folder {data_dir}: the run would '
                           'write into your data, and read its own files as slices; choose a '
                           'folder outside it')
  return workdir


def check_settings(config, task):
  """Refuses, with a ValueError or an OSError (e.g. a data folder that is missing or cannot be
  read), settings no run can use: checked before anything is written, so a refused run leaves
  no workdir behind. Returns the cache folder, which it found usable."""
  common.check_values(config)
  if config.task in TRAINING_TASKS:
    if config.get('mode') == 'generate':  # (trains nothing: no batch to split)
      parallel.train_devices(config.num_devices)
    else:
      parallel.check_batch_split(config)
  if config.task != 'predict':  # (which reads its model's data settings, not its own)
    sources.check_location(config.data)
  if hasattr(task, 'check_config'):  # the task's own: a study's stages, a classifier's data
    task.check_config(config)
  cache = datasets.cache_dir(config)
  problem = cache_problem(cache)
  if problem:
    raise ValueError(f'cannot use the cache folder {cache!r} (--config.cache_dir, '
                     f'BRAINJAX_CACHE): {problem}')
  return cache


def prepare_workdir(config, workdir):
  """The config.json text the workdir held, or None: the workdir made, locked and its
  config.json written (the first host), unless another process runs there, or it holds
  another run or another's files (a ValueError)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):  # (makedirs: 'File exists')
    raise ValueError(f'--workdir {workdir!r} is a file, not a folder')
  if os.path.lexists(workdir) and not os.path.exists(workdir):  # (makedirs: 'File exists')
    raise ValueError(f'--workdir {workdir!r} is a link to nothing')
  os.makedirs(workdir, exist_ok=True)
  if not parallel.is_first_host():  # (the first host's lock and config.json stand for all)
    return None
  reruns.check_workdir(workdir, config)  # (a folder a run may not use gets no .lock either)
  reruns.lock_workdir(workdir)
  return reruns.write_config(workdir, config)


def folders_to_make(path):
  """The folders os.makedirs(path) would make, the deepest first."""
  made = []
  while path and not os.path.lexists(path):
    made.append(path)
    path = os.path.dirname(path.rstrip(os.sep))
  return made


def remove_unbegun_run(workdir, made):
  """Undoes launch's writes in a workdir that held no run (its config.json, its .lock, and
  the folders `made`) if the run stopped before it wrote anything else: a setting refused on
  the data (a split without a class, a batch larger than the training set) leaves no
  workdir behind, as one refused before it began does."""
  ours = ('config.json', reruns.LOCK_FILE)
  if not os.path.isdir(workdir) or set(os.listdir(workdir)) - set(ours):
    return
  for name in ours:
    if os.path.lexists(os.path.join(workdir, name)):
      os.remove(os.path.join(workdir, name))
  for folder in made:  # (the deepest first; one the user made is kept)
    try:
      os.rmdir(folder)
    except OSError:  # (not empty: something else wrote there since)
      break


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


def set_up(config):
  """(the task's module, workdir, the config.json text it held or None, the folders launch
  made for it), once the hosts are joined and the settings checked; a refused setting exits
  with one line."""
  if config.get('multihost'):
    initialize_hosts(os.environ)
  task = importlib.import_module(f'brainjax.tasks.{config.task}')
  try:
    workdir = resolve_paths(config, FLAGS.workdir)
    cache = check_settings(config, task)
    # Compiled programs are cached on disk: a study's stages (and reruns) that train the same
    # network reuse them instead of recompiling.
    jax.config.update('jax_compilation_cache_dir', os.path.join(cache, 'xla'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
    made = folders_to_make(os.path.abspath(workdir))
    previous_config = prepare_workdir(config, workdir)
  except (ValueError, OSError) as error:  # (OSError: e.g. a file where the folder would be)
    sys.exit(f'error: {error}')
  logging.info('Task %s, workdir %s, %d device(s): %s', config.task, workdir,
               jax.local_device_count(), jax.devices()[0].platform)
  return task, workdir, previous_config, made


def main(argv):
  logging.get_absl_handler().addFilter(quiet_libraries)  # (the handler: JAX logs by name)
  # Exceptions Python can only print ("Exception ignored in ..."): a Ctrl-C there is sent
  # again, and Orbax's late reads after a failed restore are not printed.
  sys.unraisablehook = interrupts.resend_dropped_ctrl_c(quiet_late_reads(sys.unraisablehook))
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  if config.task not in TASKS:
    raise app.UsageError(f'unknown task {config.task!r}; known: {", ".join(TASKS)}')
  if config.get('multihost') and config.task == 'predict':  # (every host would write the same)
    sys.exit('error: predict runs on one host; drop --config.multihost')
  try:
    task, workdir, previous_config, made = set_up(config)
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
    # A refused rerun, or one stopped before it touched the results (e.g. on its data), leaves
    # the config.json that describes them.
    kept_results = reruns.untouched_since(workdir, start)
    if (isinstance(error, reruns.RerunRefused) or kept_results) and parallel.is_first_host():
      reruns.put_back_config(workdir, previous_config)
    if (previous_config is None and not isinstance(error, KeyboardInterrupt)
        and parallel.is_first_host()):
      remove_unbegun_run(workdir, made)
    if isinstance(error, KeyboardInterrupt):  # (Ctrl-C: the checkpoints written so far are whole)
      print(f'Interrupted: the same command goes on with {workdir} from where it stopped (its '
            'last checkpoint, if any).', file=sys.stderr)
      exit_now(130)  # (128 + SIGINT, as a shell reports it)
    sys.exit(f'error: {error}')
  logging.info('Done: %s/metrics.json (%d values).', workdir, len(metrics))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
