"""The yes/ and no/ folder layout of Br35H (and other labelled collections).

Class folders sit at the root or in one top folder below it (as in the Kaggle zip),
never both: a collection read from both would hold every file twice under the same
name, copies that a random split would spread across train and test. Files below the
class folders are read recursively, following links to folders (but not from one class
folder into the other). Hidden files and OS metadata (.DS_Store, __MACOSX/, Thumbs.db) are
not scans and are ignored.
"""
import contextlib
import errno
import json
import os
import stat
import struct
import zipfile
import zlib
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from absl import logging

try:
  import fcntl
except ImportError:  # not POSIX: folders go unlocked
  fcntl = None

CLASSES = ('no', 'yes')  # label 0 = healthy (NEGATIVE), 1 = tumour (POSITIVE)


def _parts(name: str, backslash: bool = True) -> List[str]:
  """Path components, without the empty and '.' ones ('./yes/a.png' is 'yes/a.png').

  `backslash`: it separates too, as in zips made on Windows (in a folder's file name on
  Linux it is a character).
  """
  if backslash:
    name = name.replace('\\', '/')
  return [p for p in name.split('/') if p not in ('', '.')]


def is_junk(name: str, backslash: bool = True) -> bool:
  """OS metadata and hidden files (macOS's ._a.png too), which are not scans (see _parts)."""
  parts = _parts(name, backslash)
  return (any(p.startswith('.') or p == '__MACOSX' for p in parts)
          or (bool(parts) and parts[-1] == 'Thumbs.db'))


_LOG_NAMES = 5  # names a log line shows


def some_names(names: Sequence[str], separator: str = ', ') -> str:
  """The first few of `names` for a log line, ' ...' after them if there are more."""
  return separator.join(names[:_LOG_NAMES]) + (' ...' if len(names) > _LOG_NAMES else '')


def climbs(name: str) -> bool:
  """Whether a zip member's name climbs with '..' ('yes/../../x.png')."""
  return '..' in _parts(name)


def warn_of_parent_parts(path: str, names: List[str]) -> None:
  """Logs a zip's members whose names climb with '..' ('yes/../../x.png'): not read (is_junk
  takes '..' as a hidden name), as where they would unzip to is outside the archive's folder."""
  climbing = [n for n in names if climbs(n)]
  if climbing:
    logging.warning('%s: %d members named with .. are not read: %s', path, len(climbing),
                    some_names(climbing))


def label_of(path: str, backslash: bool = True) -> Optional[int]:
  """'[top/]yes/a/b.jpg' -> 1 (POSITIVE), '[top/]no/...' -> 0; None outside yes/ and no/ (see
  _parts for `backslash`)."""
  parts = _parts(path, backslash)
  for depth in (0, 1):
    if len(parts) > depth + 1 and parts[depth] in CLASSES:
      return CLASSES.index(parts[depth])
  return None


def _holds_classes(folder: str) -> bool:
  return any(os.path.isdir(os.path.join(folder, c)) for c in CLASSES)


def _one_top(root: str, tops: List[str]) -> Optional[str]:
  if len(tops) > 1:
    raise ValueError(f'{root}: several top folders hold yes/ or no/ ({", ".join(tops)}); '
                     'point at one of them')
  return tops[0] if tops else None


def _class_tops(root: str) -> List[str]:
  """The top folders of root that hold yes/ or no/."""
  return sorted(e for e in os.listdir(root)
                if not is_junk(e, backslash=False) and e not in CLASSES
                and os.path.isdir(os.path.join(root, e)) and _holds_classes(os.path.join(root, e)))


def class_root(root: str) -> Optional[str]:
  """The folder that holds yes/ and no/: root, or its one top folder that does; else None."""
  if not os.path.isdir(root):
    return None
  if _holds_classes(root):
    return root
  top = _one_top(root, _class_tops(root))
  return None if top is None else os.path.join(root, top)


def has_class_folders(root: str) -> bool:
  """Whether root holds yes/ or no/ at its root or in one top folder."""
  return class_root(root) is not None


def misnamed_class_folders(root: str) -> str:
  """For a message about root's yes/ and no/: its folders that would be them in lower case
  (e.g. '; found Yes/, No/: the class folders are yes/ and no/, in lower case'), or ''."""
  try:
    return _misnamed([e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e))
                      and not _same_folder(os.path.join(root, e), os.path.join(root, e.lower()))])
  except OSError:
    return ''


def _same_folder(a: str, b: str) -> bool:
  """Whether a and b are one folder (No/ is no/ on a case-insensitive file system)."""
  try:
    return os.path.samefile(a, b)
  except OSError:
    return False


def _misnamed(folders) -> str:
  names = sorted({n for n in folders if n.lower() in CLASSES and n not in CLASSES})
  return (f'; found {", ".join(n + "/" for n in names)}: the class folders are yes/ and no/, in '
          'lower case') if names else ''


def locate_download(path: str) -> Tuple[str, str]:
  """('folder' | 'zip', where) of a download: yes/ and no/ in path (or in its one top folder),
  path itself a zip, or the one zip inside path."""
  if os.path.isfile(path):
    if not zipfile.is_zipfile(path):
      raise ValueError(f'{path} is not a readable zip archive')
    return 'zip', path
  if has_class_folders(path):
    return 'folder', path
  zips = sorted(f for f in os.listdir(path)
                if f.lower().endswith('.zip') and not is_junk(f, backslash=False))
  if len(zips) == 1:
    return locate_download(os.path.join(path, zips[0]))
  raise ValueError(
      f'{path} holds neither yes/ and no/ folders (at its root or one level down) nor '
      f'exactly one .zip of them (found {len(zips)} zips){misnamed_class_folders(path)}')


def is_inside(path: str, folder: str) -> bool:
  """Whether `path` is `folder` or lies below it, links resolved."""
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@contextlib.contextmanager
def locked_folder(folder: str):
  """Holds an exclusive flock on `folder` itself (no lock file left in it), waiting (with a log
  line) for another process that holds it. Where the system cannot lock a folder (no fcntl,
  some network file systems) it goes on without: only writers of one folder need the lock."""
  fd = None
  try:
    fd = os.open(folder, os.O_RDONLY)
    if fcntl is not None:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:  # (says why the run seems to stall)
        logging.info('Waiting for another process writing into %s', folder)
        fcntl.flock(fd, fcntl.LOCK_EX)
  except OSError:
    pass
  try:
    yield
  finally:
    if fd is not None:
      os.close(fd)  # (releases the lock)


def open_file(path: str):
  """`path` opened for binary reading, or an OSError: also for a FIFO, socket or device, whose
  read could wait for ever or never end (opened without waiting, then refused)."""
  fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_BINARY', 0))
  try:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
      kind = ('a folder' if stat.S_ISDIR(mode) else 'a pipe' if stat.S_ISFIFO(mode)
              else 'a socket' if stat.S_ISSOCK(mode) else 'a device')
      raise OSError(errno.EINVAL, f'not a regular file but {kind}', path)
    if hasattr(os, 'O_NONBLOCK'):  # (no such flag, nor os.set_blocking, on Windows)
      os.set_blocking(fd, True)
    return os.fdopen(fd, 'rb')
  except BaseException:
    os.close(fd)
    raise


def walk_files(folder: str) -> Iterator[str]:
  """Every file below `folder` (each folder's files in sorted order, then its subfolders, in
  sorted order), following links to folders once each.

  A link to `folder` or to a folder above it is not followed (it would walk `folder`'s
  siblings, e.g. no/ from inside yes/), nor a link to a folder inside `folder`, which is
  read where it is (its path, not the link's, gives its files' labels). Broken links, FIFOs,
  sockets and devices are kept, for the reader to report (open_file refuses them), and so is
  a subfolder that cannot be listed (no permission, a path too long), last, whose reading
  then fails with the reason; `folder` itself unlistable is its OSError.
  """
  root = os.path.realpath(folder)
  # A real path below root is a folder of the tree itself (realpath leaves no link in it).
  inside = root.rstrip(os.sep) + os.sep
  seen = set()
  unlisted = []
  for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted.append, followlinks=True):
    real = os.path.realpath(dirpath)
    above = dirpath != folder and (root + os.sep).startswith(real.rstrip(os.sep) + os.sep)
    linked = os.path.normpath(os.path.join(root, os.path.relpath(dirpath, folder))) != real
    if real in seen or above or (linked and real.startswith(inside)):  # read where it is
      dirnames[:] = []
      continue
    seen.add(real)
    dirnames.sort()
    for filename in sorted(filenames):
      yield os.path.join(dirpath, filename)
  for error in unlisted:
    if error.filename == folder:
      raise error
    yield error.filename


def run_folders(paths: Iterable[str]) -> Dict[str, str]:
  """{folder (real path, ending in a separator): task} of the `paths` that are a brainjax run's
  config.json: a run's outputs (a predict's overlays and regions) are not scans."""
  found = {}
  for path in paths:
    if os.path.basename(path) != 'config.json':
      continue
    try:
      with open_file(path) as f:  # (a FIFO of that name: refused, not waited on)
        task = json.load(f)['task']
    except (OSError, ValueError, TypeError, KeyError):  # not a brainjax config
      continue
    found[os.path.dirname(os.path.realpath(path)) + os.sep] = task
  return found


def _read_once(root: str, cls: str, named: List[Tuple[str, int, str]], real: Dict[str, str]):
  """`named` with one entry per file on disk (`real`: each name's real path): a link to a file
  of the class folder (or two links to one file) would read one slice twice, under two ids,
  which a random split can put on both sides. The file itself is kept (its first link if none
  is in the folder)."""
  first = {}
  for entry in sorted(named, key=lambda n: (os.path.islink(n[2]), n[0])):
    first.setdefault(real[entry[0]], entry)
  if len(first) < len(named):
    kept = {n[0] for n in first.values()}
    again = sorted(n[0] for n in named if n[0] not in kept)
    logging.warning('%s: %d files under %s/ are links to a file read there already, not read '
                    'twice: %s', root, len(again), cls, some_names(again))
    named = [n for n in named if n[0] in kept]
  return named


def text_name(name: str) -> str:
  """A file name's bytes that are not UTF-8 (kept by os.fsdecode as surrogates) as \\x escapes:
  the name Br35H's TFDS builder records (its text is UTF-8), so that a folder read as
  dataset=folder or br35h sorts, selects and names its files alike (they selected others)."""
  return name.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


def log_hidden(where: str, names: List[str]) -> None:
  """Names the hidden and OS metadata files not read (is_junk): a scan named .a.jpg is one."""
  if names:
    logging.info('%s: not reading %d hidden or OS metadata files: %s', where, len(names),
                 some_names(sorted(names)))


def iter_folder(root: str) -> Iterator[Tuple[str, int, str]]:
  """(name like 'yes/a/b.jpg', label, absolute path) of every file under the class folders, in
  the order of their names (a zip of the same folders lists the same files in the same order,
  so the first num_per_class of a class are the same files).

  A file that a link leads to from one class folder into the other (yes/more -> ../no) is
  read under its own class only, with a warning: it would be a healthy slice called tumour;
  a link to a file of its own class folder is not read a second time. Nor are the files of a
  brainjax run's folder inside (run_folders: a predict's outputs under yes/ held overlays of
  healthy scans).
  """
  top = class_root(root)
  if top is None:
    return
  ignored = _class_tops(root) if top == root else []
  if ignored:
    logging.warning('%s: reading its own yes/ and no/, not those in %s', root, ', '.join(ignored))
  misnamed = misnamed_class_folders(top)
  if misnamed:  # (No/ beside no/: its slices would be left out without a word)
    logging.warning('%s: not reading other folders%s', top, misnamed)
  folders = {cls: os.path.join(top, cls) for cls in CLASSES
             if os.path.isdir(os.path.join(top, cls))}
  for label, cls in enumerate(CLASSES):
    if cls not in folders:
      continue
    others = tuple(os.path.realpath(f).rstrip(os.sep) + os.sep
                   for c, f in folders.items() if c != cls)
    named, crossing, real, hidden = [], [], {}, []
    for full in walk_files(folders[cls]):
      # A backslash in a file name is a character here (yes/a\b.png is not yes/a/b.png).
      rel = os.path.relpath(full, folders[cls]).replace(os.sep, '/')
      name = text_name('/'.join([cls] + _parts(rel, backslash=False)))
      if is_junk(name, backslash=False):
        hidden.append(name)
        continue
      real[name] = os.path.realpath(full)
      if others and real[name].startswith(others):
        crossing.append(name)
      else:
        named.append((name, label, full))
    log_hidden(root, hidden)
    if crossing:
      logging.warning('%s: %d files under %s/ are links into another class folder, not read as '
                      '%s/: %s', root, len(crossing), cls, cls, some_names(sorted(crossing)))
    named = _read_once(root, cls, named, real)
    outputs = tuple(run_folders(full for _, _, full in named))
    if outputs:
      scans = [n for n in named if not real[n[0]].startswith(outputs)]
      logging.warning('%s: not reading the %d files of brainjax run folders under %s/ (%s)', root,
                      len(named) - len(scans), cls, ', '.join(outputs))
      named = scans
    yield from sorted(named)


def _zip_class_depth(path: str, names: List[List[str]]) -> Tuple[int, Optional[str]]:
  """(0, None) for class folders at the zip's root, (1, top) for one top folder."""
  if any(len(p) > 1 and p[0] in CLASSES for p in names):
    ignored = sorted({p[0] for p in names if len(p) > 2 and p[1] in CLASSES} - set(CLASSES))
    if ignored:
      logging.warning('%s: reading its own yes/ and no/, not those in %s', path, ', '.join(ignored))
    return 0, None
  tops = sorted({p[0] for p in names if len(p) > 2 and p[1] in CLASSES})
  return 1, _one_top(path, tops)


# An image file, or a zip member, of more bytes is refused before it is read (or inflated: zip
# bombs): a stray video or volume was read whole, a MemoryError traceback.
MAX_IMAGE_BYTES = 512 << 20
# What reading one damaged member raises (RuntimeError: an encrypted member).
MEMBER_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
                      RuntimeError)


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
  """A member's bytes; raises one of MEMBER_READ_ERRORS, or ValueError if too large."""
  if info.file_size > MAX_IMAGE_BYTES:
    raise ValueError(f'zip member too large ({info.file_size} bytes)')
  return archive.read(info)


_UTF8_NAME_FLAG = 0x800
_UNICODE_PATH_FIELD = 0x7075  # Info-ZIP's: version 1, the CRC-32 of the stored name, UTF-8 name


def member_name(info: zipfile.ZipInfo) -> str:
  """A zip member's name as its writer meant it. zipfile decodes a name without the UTF-8 flag
  as cp437, but Info-ZIP (`zip -r` on Linux) stores UTF-8 names without it (and again in its
  Unicode Path field): 'yes/ñ.jpg' was 'yes/├▒.jpg', which sorted, and so was selected, unlike
  the same folder's file."""
  if info.flag_bits & _UTF8_NAME_FLAG:
    return info.filename
  raw = info.orig_filename.encode('cp437')  # (the stored bytes: cp437 maps all 256)
  extra = info.extra
  while len(extra) >= 4:
    field, size = struct.unpack('<HH', extra[:4])
    data, extra = extra[4:4 + size], extra[4 + size:]
    if (field == _UNICODE_PATH_FIELD and len(data) > 5 and data[0] == 1
        and struct.unpack('<I', data[1:5])[0] == zlib.crc32(raw)):
      try:
        return data[5:].decode('utf-8')
      except UnicodeDecodeError:
        break
  try:
    return raw.decode('utf-8')  # (a Linux writer's names; cp437 text is rarely valid UTF-8)
  except UnicodeDecodeError:
    return info.filename


def zip_members(path: str, archive: zipfile.ZipFile) -> List[Tuple[str, zipfile.ZipInfo]]:
  """(name, info) of the files of a zip (`path`, open as `archive`), named as its writer meant
  (member_name), less those not read: named with '..' (warn_of_parent_parts) and hidden or OS
  files (log_hidden)."""
  members = [(member_name(i), i) for i in archive.infolist() if not i.is_dir()]
  warn_of_parent_parts(path, [name for name, _ in members])
  log_hidden(path, [name for name, _ in members if is_junk(name) and not climbs(name)])
  return [(name, i) for name, i in members if not is_junk(name)]


def iter_zip(path: str) -> Iterator[Tuple[str, int, Optional[bytes]]]:
  """(name, label, bytes) for every file under the class folders of a zip.

  bytes is None (logged) for a member that cannot be read: damaged, encrypted or too large.
  """
  with zipfile.ZipFile(path) as archive:
    kept = zip_members(path, archive)
    # Members sharing a path ('yes/a.jpg' twice, or './yes/a.jpg' too): the last in the
    # archive is read, as unzip would leave it on disk.
    last = {'/'.join(_parts(name)): i for name, i in kept}
    if len(last) < len(kept):
      logging.warning('%s: %d members repeat an earlier member\'s path; only the last of each '
                      'is read.', path, len(kept) - len(last))
    infos = [last[name] for name in sorted(last)]
    names = [name.split('/') for name in sorted(last)]
    depth, top = _zip_class_depth(path, names)
    misnamed = _misnamed(parts[depth] for parts in names
                         if len(parts) > depth + 1 and (top is None or parts[0] == top))
    if misnamed:
      logging.warning('%s: not reading other folders%s', path, misnamed)
    for info, parts in zip(infos, names):
      if len(parts) > depth + 1 and parts[depth] in CLASSES and (top is None or parts[0] == top):
        try:
          data = read_member(archive, info)
        except MEMBER_READ_ERRORS + (ValueError,) as e:
          logging.warning('%s: member %r cannot be read (%s): skipped.', path, '/'.join(parts),
                          e)
          data = None
        yield '/'.join(parts[depth:]), CLASSES.index(parts[depth]), data
