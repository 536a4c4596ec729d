"""The yes/ and no/ folder layout of Br35H (and other labelled collections).

Class folders may sit at the root or one level down (a top folder, as in the
Kaggle zip); files below them are read recursively. Hidden files and OS
metadata (.DS_Store, __MACOSX/, Thumbs.db) are not scans and are ignored.
"""
import os
import zipfile
from typing import Iterator, Optional, Tuple

CLASSES = ('no', 'yes')  # label 0 = healthy (NEGATIVE), 1 = tumour (POSITIVE)


def is_junk(name: str) -> bool:
  """OS metadata and hidden files, which are not scans."""
  parts = name.replace('\\', '/').split('/')
  return any(p.startswith('.') or p == '__MACOSX' for p in parts) or parts[-1] == 'Thumbs.db'


def labelled_name(path: str) -> Optional[Tuple[str, int]]:
  """'[top/]yes/a/b.jpg' -> ('yes/a/b.jpg', 1); None outside yes/ and no/."""
  parts = [p for p in path.replace('\\', '/').split('/') if p]
  for depth in (0, 1):
    if len(parts) > depth + 1 and parts[depth] in CLASSES:
      return '/'.join(parts[depth:]), CLASSES.index(parts[depth])
  return None


def iter_folder(root: str) -> Iterator[Tuple[str, int, str]]:
  """(name relative to the class folder's parent, label, absolute path), sorted walk."""
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for filename in sorted(filenames):
      full = os.path.join(dirpath, filename)
      rel = os.path.relpath(full, root)
      found = labelled_name(rel)
      if found and not is_junk(rel):
        yield found[0], found[1], full


def iter_zip(path: str) -> Iterator[Tuple[str, int, bytes]]:
  """(name, label, bytes) for every file under the class folders of a zip."""
  with zipfile.ZipFile(path) as archive:
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
      found = labelled_name(info.filename)
      if info.is_dir() or not found or is_junk(info.filename):
        continue
      yield found[0], found[1], archive.read(info)


def has_class_folders(root: str) -> bool:
  """Whether root holds yes/ or no/ at its root or one level down."""
  if not os.path.isdir(root):
    return False
  for entry in os.listdir(root):
    if entry in CLASSES and os.path.isdir(os.path.join(root, entry)):
      return True
  for entry in os.listdir(root):
    sub = os.path.join(root, entry)
    if os.path.isdir(sub) and any(
        e in CLASSES and os.path.isdir(os.path.join(sub, e)) for e in os.listdir(sub)):
      return True
  return False
