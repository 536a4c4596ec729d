"""Loads Br35H the TFDS way: prepare once (array_record), then read records.

Preparations into one data_dir are serialised across processes (an flock on the folder):
two runs sharing a cache folder would otherwise empty each other's staging folder and race
TFDS's final rename.
"""
import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import shutil
from typing import List, Tuple

from absl import logging
from google.protobuf import json_format
import tensorflow_datasets as tfds

from brainjax.data import layout
from brainjax.data import sources
from brainjax.data.br35h import br35h_dataset_builder as builder_lib


def _fingerprint(path: str) -> str:
  """Identity of the manual data (names and contents), to key the prepared copy.

  TFDS keys prepared data by version only; keying the data_dir on this too means a
  different download, or a file changed in place (even with its size and mtime kept),
  never reuses a stale copy. Hashing Br35H's 70 MB takes a fraction of a second.
  """
  h = hashlib.sha256()
  kind, found = layout.locate_download(path)  # a zip given, or found in the folder given
  if kind == 'zip':
    h.update(f'zip|{sources.file_digest(found)}'.encode())
  else:
    for name, _, full in layout.iter_folder(found):
      h.update(name.encode('utf-8', 'surrogateescape') + f'|{sources.file_digest(full)}\n'.encode())
  return h.hexdigest()[:16]


def _manual_dir_for(path: str, staging: str) -> str:
  """TFDS wants a directory; a zip given directly is linked into one (staging, ours).

  Made afresh each time: what an interrupted preparation left there (a link to where
  the zip was then, a partial copy) is no longer the zip given.
  """
  if os.path.isdir(path):
    return path
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  link = os.path.join(staging, os.path.basename(path))
  try:
    os.symlink(os.path.abspath(path), link)
  except OSError:  # filesystems without symlinks
    shutil.copyfile(path, link)
  return staging


# Beside a prepared copy: the names of the files its preparation left out (unreadable).
_UNREADABLE = 'unreadable.json'


def _prepare(manual_dir: str, prepared: str):
  """(the builder of `prepared`, whether this call prepared it from manual_dir; else it
  already was).

  Under the lock the builder is made again: a builder reads the dataset info only when it is
  made, and the process that held the lock may have just prepared the folder.
  """
  builder = builder_lib.Br35h(data_dir=prepared, file_format='array_record')
  if builder.is_prepared():
    return builder, False
  os.makedirs(os.path.dirname(prepared), exist_ok=True)
  with layout.locked_folder(os.path.dirname(prepared)):
    builder = builder_lib.Br35h(data_dir=prepared, file_format='array_record')
    if builder.is_prepared():
      return builder, False
    # (what a preparation killed before its end left: TFDS starts a folder of its own)
    for unfinished in glob.glob(os.path.join(prepared, builder.name, 'incomplete.*')):
      shutil.rmtree(unfinished, ignore_errors=True)
    logging.info('Preparing Br35H from %s into %s', manual_dir, prepared)
    source = _manual_dir_for(manual_dir, os.path.join(prepared, 'manual'))
    try:
      # (TFDS prints "Downloading and preparing dataset Unknown size" of this local copy, and
      # its progress bars put raw escape codes in a run's log: the line above says it all.)
      tfds.disable_progress_bar()
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=source))
    except ValueError as error:  # (it names the link to a zip in `prepared`, not the user's)
      raise ValueError(f'{manual_dir}: {error}') from None
    except (OSError, RuntimeError) as error:
      reason = _no_room(error)
      if reason is None:
        raise
      raise OSError(f'cannot prepare Br35H in {prepared} (--config.cache_dir, BRAINJAX_CACHE): '
                    f'{reason}') from error
    with open(os.path.join(prepared, _UNREADABLE), 'w') as f:
      json.dump(list(builder.unreadable), f)
  return builder, True


def _warn_of_files_left_out(manual_dir: str, prepared: str) -> None:
  """Names again, on each later read, the files the prepared copy left out: they are in no
  count of skipped files the runs reading it log."""
  try:
    with open(os.path.join(prepared, _UNREADABLE)) as f:
      names = json.load(f)
  except (OSError, ValueError):  # (a copy prepared before this was recorded)
    return
  if names:
    logging.warning('%d Br35H files in %s could not be read when it was prepared, and are left '
                    'out: %s', len(names), manual_dir, layout.some_names(names))


def _no_room(error):
  """'No space left on device' (or a full quota) if that is why `error`'s write failed, else
  None. array_record says it in a RuntimeError's text only: 'Failed to finalize writing of
  split "train": write() failed: No space left on device; writing <file>; at byte ...'."""
  for code in (errno.ENOSPC, errno.EDQUOT):
    if getattr(error, 'errno', None) == code or os.strerror(code) in str(error):
      return os.strerror(code)
  return None


def load_br35h_records(manual_dir: str, data_dir: str) -> List[Tuple[str, int, bytes]]:
  """[(filename like 'yes/y0.jpg', label 0|1, raw file bytes)] sorted by filename.

  manual_dir: the unzipped download (yes/ and no/, possibly inside one top
  folder), a folder holding its .zip, or the .zip itself. data_dir: where TFDS
  writes the prepared dataset (under a subfolder keyed by the download).
  """
  manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
  if not os.path.exists(manual_dir):
    instructions = ' '.join(builder_lib.Br35h.MANUAL_DOWNLOAD_INSTRUCTIONS.split())  # one line
    raise ValueError(f'Br35H data not found at {manual_dir}: {instructions}')
  if os.path.isfile(manual_dir) and not manual_dir.lower().endswith('.zip'):
    raise ValueError(f'{manual_dir} is a file but not a .zip')
  key = _fingerprint(manual_dir)
  prepared = os.path.join(os.fspath(data_dir), f'br35h_{key}')
  # A damaged copy (a file cut short, flipped or gone, a damaged dataset_info.json) was a
  # traceback on every run.
  def damaged(error):
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f'the Br35H copy prepared in {prepared} cannot be read ({reason}): delete '
                      'that folder, and the next run prepares it again')

  try:
    builder, prepared_now = _prepare(manual_dir, prepared)
  # (the builder reads the copy's dataset_info.json; TFDS asserts its version is the builder's)
  except (json_format.ParseError, AssertionError) as error:
    raise damaged(error) from None
  if not prepared_now:
    _warn_of_files_left_out(manual_dir, prepared)
  try:
    data = builder.as_data_source('train')
    records = []
    for i in range(len(data)):
      example = data[i]
      name = example['filename']
      name = name.decode('utf-8') if isinstance(name, bytes) else str(name)
      records.append((name, int(example['label']), bytes(example['image_bytes'])))
  except (RuntimeError, OSError, ValueError, TypeError, KeyError) as error:
    # (array_record's errors; a record cut short decodes to None fields)
    raise damaged(error) from None
  records.sort(key=lambda r: r[0])
  return records
