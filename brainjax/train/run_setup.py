"""What launch.py does before a task runs: the config's paths resolved (`resolve_paths`)
and its settings checked (`check_settings`), each refused with a one-line ValueError or
OSError before anything is written; the workdir made, locked and its config.json written
(`prepare_workdir`); and what a run that failed leaves there (`after_failure`).
"""
import os

from brainjax.data import layout
from brainjax.data import sources
from brainjax.train import parallel
from brainjax.train import reruns
from configs import common

TRAINING_TASKS = ('vae_gen', 'gan_gen', 'cnn_cls', 'cvae_cls')  # their batch splits across devices
TASKS = TRAINING_TASKS + ('study', 'predict')
# What a run writes in its workdir (besides the export, by default <workdir>/synthetic).
_RUN_FILES = reruns.BEFORE_TRAINING | {reruns.LOCK_FILE, 'metrics.json'}


def folder_problem(folder):
  """Why a folder (the cache, an export) could not be made ('' if it can), found without making
  it (it may lie inside the workdir, which must be empty until the run writes its config.json)."""
  if os.path.exists(folder):
    return '' if os.path.isdir(folder) else 'it is a file'
  if os.path.lexists(folder):  # (a link to nothing: makedirs says only 'File exists')
    return 'it is a link to nothing'
  parent = os.path.dirname(_folders_to_make(os.path.abspath(folder))[-1])  # (the first there)
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
      # (' ~/b' too, after 'a, ': the parts are read stripped)
      tree[key] = ','.join(part[:len(part) - len(part.lstrip())] + os.path.expanduser(
          part.lstrip()) for part in value.split(','))
    elif hasattr(value, 'items'):
      _expand_home(value)


def resolve_paths(config, workdir):
  """The workdir (default runs/<config name>), with config's paths as the user means them: `~`
  expanded everywhere, the data folder made absolute (a run resumed from another folder, or
  naming the same folder otherwise, is the same run). A ValueError for a path Orbax or XLA
  cannot take (one that is not UTF-8), for a workdir, cache or export inside the data
  folder: the run would write into the user's data, and read its own files as slices, and for
  an export holding the workdir or among its run's files."""
  _expand_home(config)
  if workdir is not None and not workdir.strip():  # (e.g. --workdir=$DIR, DIR unset)
    raise ValueError('--workdir is empty: name a folder, or leave the flag out for runs/'
                     f'{config.name}')
  run_name = os.path.normpath(config.name.strip() or '.')
  if workdir is None and (run_name in ('.', '..') or run_name.startswith('..' + os.sep)
                          or os.path.isabs(run_name)):  # (the default: runs/ or outside it)
    raise ValueError(f'--config.name={config.name!r} names no folder inside runs/: name the '
                     'run, or give --workdir')
  workdir = os.path.expanduser(workdir or os.path.join('runs', config.name))
  if os.pardir in workdir.split(os.sep):
    # As the system resolves it: a/b/../c opens only once a/b exists, and os.makedirs made
    # a/b too, a folder a refused run then left behind. (Its last part stays as it is: a link
    # there is the workdir's own, which prepare_workdir checks.)
    head, tail = os.path.split(workdir.rstrip(os.sep))
    workdir = (os.path.join(os.path.realpath(head), tail) if tail not in ('', os.curdir, os.pardir)
               else os.path.realpath(workdir))
  written = {'--workdir': workdir, 'cache_dir': sources.resolve_cache_dir(config.cache_dir)}
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
  if export_dir and (layout.is_inside(workdir, export_dir) or any(
      layout.is_inside(export_dir, os.path.join(workdir, own)) for own in _RUN_FILES)):
    # (the export refuses a folder of other files: it did so once the model had trained)
    raise ValueError(f'export.dir {export_dir} holds --workdir {workdir} or its run\'s files: '
                     'leave export.dir empty (for <workdir>/synthetic) or choose a folder of '
                     'its own')
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
  task.check_config(config)  # the task's own: a study's stages, a classifier's data
  cache = sources.resolve_cache_dir(config.cache_dir)
  problem = folder_problem(cache)
  if problem:
    raise ValueError(f'cannot use the cache folder {cache!r} (--config.cache_dir, '
                     f'BRAINJAX_CACHE): {problem}')
  export_dir = config.get('export', {}).get('dir')
  problem = export_dir and folder_problem(export_dir)
  if problem:  # (it was found once the model had trained)
    raise ValueError(f'cannot use export.dir {export_dir!r}: {problem}')
  return cache


def prepare_workdir(config, workdir):
  """(the config.json text the workdir held or None, the folders made for it): the workdir
  made, locked and its config.json written (the first host), unless another process runs
  there, or it holds another run or another's files (a ValueError)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):  # (makedirs: 'File exists')
    raise ValueError(f'--workdir {workdir!r} is a file, not a folder')
  if os.path.lexists(workdir) and not os.path.exists(workdir):  # (makedirs: 'File exists')
    raise ValueError(f'--workdir {workdir!r} is a link to nothing')
  made = _folders_to_make(os.path.abspath(workdir))
  os.makedirs(workdir, exist_ok=True)
  if not parallel.is_first_host():  # (the first host's lock and config.json stand for all)
    return None, made
  # (a cache folder set inside the workdir is no part of its run)
  cache = _entry_holding(workdir, sources.resolve_cache_dir(config.cache_dir))
  reruns.check_workdir(workdir, config, ignored=cache)  # (a folder refused gets no .lock either)
  reruns.lock_workdir(workdir)
  reruns.recover_killed_rerun(workdir)
  return reruns.write_config(workdir, config, ignored=cache), made


def _entry_holding(workdir, path):
  """(the entry of workdir that holds path,), or () if path is not inside workdir."""
  if not layout.is_inside(path, workdir):
    return ()
  return (os.path.relpath(os.path.realpath(path), os.path.realpath(workdir)).split(os.sep)[0],)


def after_success(workdir):
  """The run's config.json describes its results: the text it replaced is dropped."""
  if parallel.is_first_host():
    reruns.end_rerun(workdir)


def after_failure(workdir, previous_config, made, start, error):
  """What a run that failed or was interrupted leaves: a refused rerun, or one stopped before
  it touched its results, the config.json that describes them; a new run refused before it
  wrote anything, no workdir (an interrupted one keeps it, to resume). The first host writes
  the run's files; every host removes the empty folders its own makedirs made."""
  first_host = parallel.is_first_host()
  if first_host and (isinstance(error, reruns.RerunRefused)
                     or reruns.untouched_since(workdir, start)):
    reruns.put_back_config(workdir, previous_config)
  if first_host:
    reruns.end_rerun(workdir)
  if previous_config is None and not isinstance(error, KeyboardInterrupt):
    if first_host:
      _remove_unbegun_run(workdir, made)
    else:
      _remove_empty_folders(made)


def _folders_to_make(path):
  """The folders os.makedirs(path) would make, the deepest first."""
  made = []
  while path and not os.path.lexists(path):
    made.append(path)
    path = os.path.dirname(path.rstrip(os.sep))
  return made


def _remove_unbegun_run(workdir, made):
  """Undoes launch's writes in a workdir that held no run (its config.json, its .lock, and
  the folders `made`) if the run stopped before it wrote anything else: a setting refused on
  the data (a split without a class, a batch larger than the training set) leaves no
  workdir behind, as one refused before it began does. Hidden files (.DS_Store), which a new
  workdir may hold, are kept, and so is the folder holding them."""
  ours = ('config.json', reruns.LOCK_FILE)
  if not os.path.isdir(workdir) or {e for e in os.listdir(workdir)
                                    if not e.startswith('.')} - set(ours):
    return
  for name in ours:
    try:
      os.remove(os.path.join(workdir, name))
    except FileNotFoundError:
      pass
    except OSError:  # (the run's own error is the one to report)
      return
  _remove_empty_folders(made)


def _remove_empty_folders(made):
  """os.rmdir of the folders `made` (the deepest first), up to the first that is not empty."""
  for folder in made:  # (the deepest first; one the user made is kept)
    try:
      os.rmdir(folder)
    except OSError:  # (not empty: something else wrote there since)
      break
