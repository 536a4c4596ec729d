"""Lists the image files of a prediction input: one file, a folder (recursive) or a zip.

Every file becomes one `InputFile`, images or not: deciding what is an image is the
decoder's job, so a stray text file, a pipe or a subfolder that cannot be listed is
reported (as a skip) rather than silently passed over. Only OS metadata and hidden files
(layout.is_junk: .DS_Store, __MACOSX/, Thumbs.db, dot-files) are left out, as everywhere in
brainjax. Paths are relative to
the input, '/'-separated, in sorted order. The input is only ever opened for reading.

Labels follow the yes/ no/ layout of Br35H and other public collections
(layout.label_of): a file under `yes/` or `no/` at the input's root or one level
down is a tumour or a healthy slice; anything else is unlabelled. Links to folders are
followed.
"""
import dataclasses
import os
import threading
import zipfile
from typing import List, Optional

from absl import logging
import numpy as np

from brainjax.data import image_io
from brainjax.data import layout


def safe_relpath(relpath: str, backslash: bool = True) -> str:
  """`relpath` without empty, '.' and '..' parts: it cannot leave an output folder;
  `backslash`: a separator too (zip names; not a folder's file names, where two files
  'a\\b.png' and 'a/b.png' would otherwise share one output)."""
  if backslash:
    relpath = relpath.replace('\\', '/')
  parts = [p for p in relpath.split('/') if p not in ('', '.', '..')]
  return '/'.join(parts) or '_'


@dataclasses.dataclass(frozen=True)
class InputFile:
  """One file of the input.

  path: relative to the input ('/'-separated; the file name for a single file; in a zip, the
    member's name, layout.member_name).
  label: POSITIVE / NEGATIVE from its folders, or None.
  source: the file on disk, or the zip archive holding the member.
  member: in a zip, the member's name as zipfile lists it.
  """
  path: str
  label: Optional[int]
  source: str
  in_zip: bool = False
  member: str = ''


class Reader:
  """Decodes InputFiles; zip archives stay open between reads. Thread-safe.

  Use as a context manager (closes the archives).
  """

  def __init__(self):
    self._archives = {}
    self._lock = threading.Lock()

  def _zip_bytes(self, file: InputFile) -> bytes:
    try:
      with self._lock:  # one archive handle, one reader at a time
        archive = self._archives.get(file.source)
        if archive is None:
          archive = self._archives[file.source] = zipfile.ZipFile(file.source)
        # The last member of that name, as listed.
        return layout.read_member(archive, archive.getinfo(file.member))
    except ValueError as e:  # too large
      raise image_io.UnreadableImage(str(e)) from None
    except layout.MEMBER_READ_ERRORS + (KeyError,) as e:
      raise image_io.UnreadableImage(f'cannot read zip member: {e}') from None

  def read(self, file: InputFile) -> np.ndarray:
    """The decoded float32 (H, W) image in [0, 1]; raises image_io.UnreadableImage."""
    if file.in_zip:
      return image_io.decode_image(self._zip_bytes(file))
    return image_io.read_image_file(file.source)

  def close(self):
    with self._lock:
      for archive in self._archives.values():
        archive.close()
      self._archives.clear()

  def __enter__(self):
    return self

  def __exit__(self, *unused):
    self.close()


def _walk_folder(root: str) -> List[InputFile]:
  files, crossing, hidden = [], [], []
  real_root = os.path.realpath(root)
  for full in layout.walk_files(root):  # (broken links kept: a skipped row says so)
    rel = os.path.relpath(full, root).replace(os.sep, '/')
    if layout.is_junk(rel, backslash=False):
      hidden.append(rel)
      continue
    label = layout.label_of(rel, backslash=False)
    # A link from one class folder into the other (yes/x.png -> ../no/a.png) would be a
    # healthy slice labelled tumour: not read there, as in training (layout.iter_folder).
    target = os.path.relpath(os.path.realpath(full), real_root).replace(os.sep, '/')
    inside = not target.startswith('../')  # (a link out of the input keeps its own label)
    if label is not None and inside and layout.label_of(target, backslash=False) not in (
        None, label):
      crossing.append(rel)
      continue
    files.append(InputFile(rel, label, full))
  layout.log_hidden(root, hidden)
  if crossing:
    logging.warning('%s: %d files are links into the other class folder, not read: %s', root,
                    len(crossing), layout.some_names(sorted(crossing)))
  return sorted(files, key=lambda f: f.path)


def _list_zip(path: str) -> List[InputFile]:
  try:
    with zipfile.ZipFile(path) as archive:
      names = [(i.filename, n) for n, i in layout.zip_members(path, archive)]
  except (zipfile.BadZipFile, OSError) as e:
    raise ValueError(f'cannot read zip input {path!r}: {e}') from None
  # Members that share a path ('a.png' twice, or 'yes\\a.png' beside 'yes/a.png') would share
  # an output file: the last one is read, as unzip would leave it on disk.
  last = {safe_relpath(n): (n, m) for m, n in names}
  if len(last) < len(names):
    logging.warning('%s: %d members repeat an earlier member\'s path; only the last of each '
                    'is read.', path, len(names) - len(last))
  return [InputFile(n, layout.label_of(n), path, in_zip=True, member=m)
          for n, m in sorted(last.values())]


def check_input(path) -> None:
  """The error list_inputs would raise for `path`, found without reading a folder's tree or a
  zip's directory (and without their warnings)."""
  path = os.fspath(path)
  if not path:
    raise ValueError('no input given: set --config.input to an image file, a folder or a zip')
  if os.path.isdir(path):
    os.listdir(path)  # (a folder that cannot be read: its OSError)
    return
  if not os.path.exists(path):
    raise FileNotFoundError(f'input {path!r} does not exist')
  if not os.path.isfile(path):  # (a pipe or a device: reading it could wait for ever)
    raise ValueError(f'input {path!r} is not a file, a folder or a zip')
  if path.lower().endswith('.zip') and not zipfile.is_zipfile(path):
    raise ValueError(f'input {path!r} is named .zip but is not a readable zip archive')


def list_inputs(path) -> List[InputFile]:
  """Every file of `path` (a file, a folder searched recursively, or a .zip)."""
  check_input(path)
  path = os.fspath(path)
  if os.path.isdir(path):
    files = _walk_folder(path)
  elif zipfile.is_zipfile(path):
    files = _list_zip(path)
  else:
    return [InputFile(os.path.basename(path), None, path)]
  _warn_of_misnamed_class_folders(path, files)
  return files


def _warn_of_misnamed_class_folders(path: str, files: List[InputFile]) -> None:
  """Yes/ or NO/ is no class folder: its files are unlabelled, which a user expects not."""
  misnamed = [f.path for f in files
              if f.label is None and layout.label_of(f.path.lower(), backslash=False) is not None]
  if misnamed:
    logging.warning('%s: %d inputs, e.g. %s, are unlabelled: the class folders are yes/ and no/, '
                    'in lower case', path, len(misnamed), misnamed[0])
