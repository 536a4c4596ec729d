"""A workdir holds one run: its config.json, and what a rerun there may change.

`check_workdir` decides whether a command may run in a workdir (new, empty, or the same run
resumed or rerun with RERUN_FIELDS changed), `lock_workdir` keeps a second process out while
one runs there, and `write_config` writes config.json; a refused rerun, or one that stopped
before it changed the results (`untouched_since`), gets the old config.json back
(`put_back_config`): run_setup (launch.py) and each study stage call them. A kill skips that
put-back: the text replaced waits in PREVIOUS_CONFIG until the rerun ends, and the next run
in the workdir puts it back (`recover_killed_rerun`) if the killed one had not changed the
results.
"""
import contextlib
import json
import os
import time
from typing import Optional

try:
  import fcntl
except ImportError:  # not POSIX: workdirs go unlocked
  fcntl = None

import ml_collections

from brainjax.train import checkpoints
from brainjax.train.reporting import atomic_open


LOCK_FILE = '.lock'
# While a rerun that replaced config.json runs: the text it replaced, and since when.
PREVIOUS_CONFIG = '.config.previous.json'


def lock_workdir(workdir) -> Optional[int]:
  """Locks workdir, or a ValueError naming the process that holds it: two runs in one workdir
  would train into each other's checkpoints (Orbax's start-up cleanup even deletes the other's
  save in flight) and leave a config.json of one beside the results of the other.

  The lock is an flock on workdir/.lock, held while the returned descriptor is open (launch.py
  keeps it for the process's life; a kill releases it); None on a file system without locks,
  where the workdir goes unlocked.
  """
  if fcntl is None:
    return None
  fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.read(fd, 32).decode(errors='replace').strip() or 'unknown'
    os.close(fd)
    raise ValueError(f'{workdir} is in use by another run (process {holder}): wait for it to '
                     'end, or choose another --workdir') from None
  except OSError:  # (e.g. ENOLCK: a network file system without locks)
    os.close(fd)
    return None
  os.ftruncate(fd, 0)
  os.write(fd, str(os.getpid()).encode())
  return fd


@contextlib.contextmanager
def locked_workdir(workdir):
  """lock_workdir for the block (a study's stage: another launch.py there is refused)."""
  fd = lock_workdir(workdir)
  try:
    yield
  finally:
    if fd is not None:
      os.close(fd)


def read_config_json(workdir):
  """The config of the run's results, as a JSON dict: workdir/config.json, or, while a rerun
  that replaced it has changed none of them (or was killed before it did), the one it
  replaced (write_config)."""
  pending = _replaced_config(workdir)
  if pending is not None and untouched_since(workdir, pending[1]):
    return json.loads(pending[0])
  with open(os.path.join(workdir, 'config.json')) as f:
    return json.load(f)


def load_config(workdir):
  """The config a run saved as workdir/config.json, as a ConfigDict (JSON lists -> tuples)."""
  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    return tuple(tuples(v) for v in x) if isinstance(x, list) else x
  return ml_collections.ConfigDict(tuples(read_config_json(workdir)))


# Config fields a rerun may change in a workdir that holds a run (a dotted field matches if
# any of its parts is listed, e.g. export.dir). Any run: how it runs, not what it computes.
RUN_FIELDS = frozenset({'checkpoint_every_secs', 'log_every_steps', 'keep_checkpoints',
                        'cache_dir', 'num_devices', 'multihost'})
# A task's run: also how long it trains and what it does with the trained model, and where its
# synthetic exports are: named otherwise (from another folder, or moved and re-exported), they
# are the same data, which the checkpoints' data key checks (loop.check_data_key).
RERUN_FIELDS = RUN_FIELDS | {'num_epochs', 'mode', 'export', 'anomaly', 'synthetic_dirs'}


def flat_fields(tree, prefix=''):
  """{'data.data_dir': value, ...} of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat_fields(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _same_setting(field, a, b):
  """Whether two values of a field are the same setting: a data folder named otherwise (relative
  or absolute, through a link, with a trailing slash) is the same folder."""
  if field.split('.')[-1] == 'data_dir' and a and b and isinstance(a, str) and isinstance(b, str):
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
  return a == b


def config_changes(saved, config, allowed=RERUN_FIELDS):
  """['field: saved -> new', ...] of the fields (beyond `allowed`) where two run configs
  (JSON dicts) differ; fields only one of them has (another version's) are not compared."""
  old, new = flat_fields(saved), flat_fields(config)
  return [f'{k}: {old[k]!r} -> {new[k]!r}' for k in sorted(old.keys() & new.keys())
          if not _same_setting(k, old[k], new[k]) and not allowed.intersection(k.split('.'))
          and not _unread_data_dir(k, old, new)]


def _unread_data_dir(field, old, new):
  """Whether `field` is a data_dir that the phantom, the dataset of both, does not read (a run
  begun when brainjax accepted one beside it may drop it: launch now refuses the pair)."""
  if field.split('.')[-1] != 'data_dir':
    return False
  dataset = field[:-len('data_dir')] + 'dataset'
  return old.get(dataset) == new.get(dataset) == 'phantom'


def changes_message(workdir, changed):
  """The one-line error for a workdir whose run has other settings."""
  return (f'{workdir} holds a run with other settings ({"; ".join(changed[:3])}'
          f'{"; ..." * (len(changed) > 3)}): rerun it with its own, or choose another --workdir')


class RerunRefused(ValueError):
  """A workdir's run cannot be rerun so (trained on other data, or further than asked): raised
  before the run changes any file, so that its caller puts back the config.json it held."""


# What a run writes before its first checkpoint: a workdir holding no more than these, and no
# committed checkpoint in them, is a run that stopped before it had trained (e.g. a loss that
# was not finite from the first steps), which a rerun may fix with other settings. (A
# generator's samples/ holds a grid from each epoch's end, the first before any checkpoint.)
BEFORE_TRAINING = {'config.json', 'eval_ids.json', 'checkpoints', 'best', 'tensorboard',
                   'samples'}


def check_workdir(workdir, config, allowed=None, ignored=()):
  """The config.json text workdir holds (None if none), or a ValueError if it holds
  something else than this run.

  A workdir is new, empty, or the same run's (resumed, or rerun with `allowed` fields
  changed: by default RERUN_FIELDS; a predict run may be redone with any inputs, and a study
  with any settings its stages' own checks let through, study.check_stages): a run resumed
  with other settings would mix two runs in one checkpoint, and other files in it could be
  someone's data. A ValueError names what is there. A run that stopped before its first
  checkpoint (e.g. it refused its data, or its loss was not finite from the start) has not
  begun: its rerun may fix any setting.
  `ignored`: entries of workdir that are no run's (the preprocessing cache, set inside it).
  """
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config.to_json_best_effort(indent=1))
  # (X.tmp: a file atomic_open was writing when a kill came, which counts as X would;
  # config.json's own is replaced by write_config)
  present = sorted({e[:-len('.tmp')] if e.endswith('.tmp') else e
                    for e in os.listdir(workdir) if not e.startswith('.')}
                   - {'config.json', *ignored})
  previous = None
  if os.path.exists(path):
    with open(path) as f:
      previous = f.read()
    try:
      saved = json.loads(previous)
    except ValueError:  # (JSONDecodeError)
      saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get('task'), str):
      # (another tool's config.json, or none a run wrote: a list was an AttributeError)
      raise ValueError(f'{path} is not the config of a brainjax run: not a brainjax workdir; '
                       'choose a new or empty one')
    if saved.get('task') != new['task']:
      raise ValueError(f'{workdir} holds a {saved.get("task")} run, not a {new["task"]} one: '
                       'choose another --workdir')
    # (a predict run may be redone with any inputs; a study's stages check what they ran with,
    # study.check_stages)
    changed = ([] if new['task'] in ('predict', 'study') else
               config_changes(saved, new, RERUN_FIELDS if allowed is None else allowed))
    begun = bool(set(present) - BEFORE_TRAINING) or checkpoints.holds_checkpoint(workdir)
    if changed and begun:  # (if not, its config.json is replaced)
      raise RerunRefused(changes_message(workdir, changed))
  elif present:
    raise ValueError(f'{workdir} holds {", ".join(present[:3])}{", ..." * (len(present) > 3)} '
                     'but no config.json: not a brainjax workdir; choose a new or empty one')
  return previous


def write_config(workdir, config, allowed=None, ignored=()):
  """Writes workdir/config.json, unless workdir holds something else than this run (the
  ValueError of check_workdir); returns the text it replaced (None if none), for
  `put_back_config` after a RerunRefused."""
  previous = check_workdir(workdir, config, allowed, ignored)
  text = config.to_json_best_effort(indent=1)
  if previous is not None and previous != text:  # (kept until end_rerun, for a kill)
    with atomic_open(os.path.join(workdir, PREVIOUS_CONFIG)) as f:
      json.dump({'config': previous, 'since': time.time()}, f)
  with atomic_open(os.path.join(workdir, 'config.json')) as f:
    f.write(text)
  return previous


def end_rerun(workdir):
  """Forgets the config.json text write_config replaced: the rerun ended (put back, or not)."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(workdir, PREVIOUS_CONFIG))


def _replaced_config(workdir):
  """(the config.json text a rerun replaced, since when), or None: none, or a damaged record."""
  try:
    with open(os.path.join(workdir, PREVIOUS_CONFIG)) as f:
      record = json.load(f)
    return str(record['config']), float(record['since'])
  except (OSError, ValueError, TypeError, KeyError):
    return None


def recover_killed_rerun(workdir):
  """Puts back the config.json text a rerun replaced, when that rerun was killed (no end_rerun)
  before it changed the run's results: config.json would describe settings the results were
  not made with. Call with the workdir locked."""
  pending = _replaced_config(workdir)
  if pending is not None and untouched_since(workdir, pending[1]):
    put_back_config(workdir, pending[0])
  end_rerun(workdir)


def untouched_since(workdir, start):
  """Whether workdir holds metrics.json and nothing in it but its config.json (and lock) was
  written or removed after `start` (a time.time()): a run stopped before it changed its
  results (a task removes metrics.json before it changes them, and writes it last)."""
  if not os.path.isfile(os.path.join(workdir, 'metrics.json')):
    return False
  for root, folders, files in os.walk(workdir):  # (a folder's time changes with its entries)
    for name in folders + files:
      if root == workdir and name in ('config.json', 'config.json.tmp', LOCK_FILE,
                                      PREVIOUS_CONFIG, PREVIOUS_CONFIG + '.tmp'):
        continue
      # (a second's margin: some file systems keep coarser times)
      if os.lstat(os.path.join(root, name)).st_mtime > start - 1.0:
        return False
  return True


def put_back_config(workdir, previous):
  """Restores the config.json text `write_config` replaced (nothing if it replaced none): a
  refused rerun leaves the run's description as it found it."""
  if previous is not None:
    with atomic_open(os.path.join(workdir, 'config.json')) as f:
      f.write(previous)
