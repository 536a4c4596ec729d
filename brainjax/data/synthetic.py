"""Synthetic data sets written by the generators, read back as a data source.

Layout of an export folder:
  out_dir/manifest.json   {'format': 1, 'classes': {'yes': {...provenance, 'count': N,
                          'pixels_sha256': digest of the images}, 'no': ...}}
  out_dir/yes/00000.png   8-bit grayscale, already preprocessed (size x size)
  out_dir/no/00000.png

Each class is written to a staging folder and renamed into place, and the
manifest is replaced atomically. A class's manifest entry is dropped before its
folder is replaced and written after, so an interrupted export leaves a class the
reader refuses, never one image set under another's provenance. Manifest updates
hold a lock on the folder, so exports of the two classes may run at once. Names
have at least five digits, more when the count needs them. Reading does not crop
again: the images are already in the preprocessed frame.
"""
import hashlib
import json
import os
import shutil
from typing import Any, Dict, Optional

from absl import logging
import numpy as np
from PIL import Image

from brainjax.data import layout
from brainjax.data.examples import Examples, NEGATIVE, POSITIVE
from brainjax.train import reporting

FORMAT = 1
MANIFEST = 'manifest.json'
FOLDERS = dict(enumerate(layout.CLASSES))  # label: its folder, as in the real data's layout


def read_manifest(out_dir: str) -> Dict[str, Any]:
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.isfile(path):
    raise ValueError(f'{out_dir} is not a synthetic export: {MANIFEST} is missing')
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f'cannot read {path}: {e}') from None
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT or not isinstance(
      manifest.get('classes'), dict):
    raise ValueError(f'{path} is not a format-{FORMAT} synthetic manifest')
  return manifest


def _write_json_atomic(path: str, value) -> None:
  # A name of this process's own, made with open() (not mkstemp: its 0600 mode would keep
  # other users of a shared study folder from reading the export).
  tmp = os.path.join(os.path.dirname(path), f'.manifest.{os.getpid()}.tmp')
  try:
    with open(tmp, 'w') as f:
      json.dump(value, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _set_entry(out_dir: str, folder: str, entry: Optional[Dict[str, Any]]) -> None:
  """Sets (None: drops) one class's manifest entry, re-reading the manifest under the lock:
  another process's export of the other class may have changed it since."""
  with layout.locked_folder(out_dir):
    manifest = read_manifest(out_dir)
    if entry is None:
      if manifest['classes'].pop(folder, None) is None:
        return
    else:
      manifest['classes'][folder] = entry
    _write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)


def _is_running(pid: int) -> bool:
  if os.name != 'posix':  # (Windows' os.kill would end the process)
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's
    return True
  return True


def _remove_leftovers(out_dir: str, folder: str) -> None:
  """The staging and old folders of this class left by killed exports on this machine."""
  for name in os.listdir(out_dir):
    parts = name.split('.')  # '.yes.1234.staging' -> ['', 'yes', '1234', 'staging']
    if (len(parts) == 4 and parts[:2] == ['', folder] and parts[2].isdigit()
        and parts[3] in ('staging', 'old') and not _is_running(int(parts[2]))):
      shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def _fresh_folder(path: str) -> str:
  """An empty folder at `path` (made with the umask's mode, unlike mkdtemp's 0700)."""
  shutil.rmtree(path, ignore_errors=True)  # a leftover of a killed process with this pid
  os.makedirs(path)
  return path


def _file_names(count: int):
  """00000.png, 00001.png, ...: one width for all, so text order is numeric order."""
  width = max(5, len(str(count - 1)))
  return [f'{i:0{width}d}.png' for i in range(count)]


def pixels_digest(pixels: np.ndarray) -> str:
  """sha256 of uint8 images (N, H, W) and their shape: what a class's slices are, whatever
  wrote them."""
  return hashlib.sha256(repr(pixels.shape).encode() + np.ascontiguousarray(pixels).tobytes()
                        ).hexdigest()


def check_export_target(out_dir: str) -> None:
  """A ValueError unless out_dir can take an export: absent, empty, or an export (with a
  readable manifest). Only a folder this module made is ever written into: a class folder
  replaced here could be someone's scans."""
  if not os.path.lexists(out_dir):
    return
  if not os.path.isdir(out_dir):
    raise ValueError(f'{out_dir} is not a folder: export into a new or empty folder')
  if os.path.exists(os.path.join(out_dir, MANIFEST)):
    read_manifest(out_dir)  # (a readable one)
    return
  present = sorted(e for e in os.listdir(out_dir) if not layout.is_junk(e, backslash=False))
  if present:
    raise ValueError(f'{out_dir} holds {", ".join(present[:3])}{", ..." * (len(present) > 3)} '
                     f'but no {MANIFEST}: it is not a synthetic export; export into a new '
                     'or empty folder')


def write_synthetic(out_dir: str, images: np.ndarray, label: int,
                    provenance: Dict[str, Any]) -> str:
  """Writes images (N, H, W, 1) float in [0, 1] as out_dir/{yes|no}/00000.png, ...

  out_dir must be new, empty or an export: that class's folder is replaced if present
  and its entry (provenance plus 'count' and 'pixels_sha256') merged into the manifest.
  Returns the class folder.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 1 or len(images) == 0:
    raise ValueError(f'images must be (N, H, W, 1) with N > 0, got shape {images.shape}')
  if not np.isfinite(images).all():
    raise ValueError('images hold NaN or infinite values')
  if images.min() < -1e-3 or images.max() > 1.0 + 1e-3:  # beyond rounding error
    raise ValueError(f'images must be within [0, 1], got [{images.min()}, {images.max()}]')
  if label not in FOLDERS:
    raise ValueError(f'label must be {NEGATIVE} (no) or {POSITIVE} (yes), got {label}')
  try:
    json.dumps(provenance)
  except TypeError as e:
    raise ValueError(f'provenance must be JSON-serialisable: {e}') from None
  folder = FOLDERS[label]
  check_export_target(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  if not os.path.exists(os.path.join(out_dir, MANIFEST)):
    # A new export claims its empty folder with its manifest before any class is placed
    # (an interrupted export can then be redone).
    _write_json_atomic(os.path.join(out_dir, MANIFEST), {'format': FORMAT, 'classes': {}})
  pixels = np.round(np.clip(images[..., 0], 0.0, 1.0) * 255.0).astype(np.uint8)
  staging = _fresh_folder(os.path.join(out_dir, f'.{folder}.{os.getpid()}.staging'))
  try:
    for name, pixel in zip(_file_names(len(pixels)), pixels):
      with reporting.naming(os.path.join(out_dir, folder, name)):  # (a full disk: where)
        Image.fromarray(pixel, mode='L').save(os.path.join(staging, name))
    final = os.path.join(out_dir, folder)
    _set_entry(out_dir, folder, None)  # unlisted while it is replaced
    if os.path.exists(final):
      trash = _fresh_folder(os.path.join(out_dir, f'.{folder}.{os.getpid()}.old'))
      os.replace(final, os.path.join(trash, folder))
      os.replace(staging, final)
      shutil.rmtree(trash)
    else:
      os.replace(staging, final)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  _set_entry(out_dir, folder, {**provenance, 'count': int(len(pixels)),
                               'pixels_sha256': pixels_digest(pixels)})
  _remove_leftovers(out_dir, folder)
  return final


def read_synthetic(out_dir: str) -> Examples:
  """Reads an export folder as Examples (ids like 'yes/00012.png'), no cropping."""
  manifest = read_manifest(out_dir)
  unknown = set(manifest['classes']) - set(FOLDERS.values())
  if unknown:
    raise ValueError(f'{out_dir}/{MANIFEST} names unknown classes {sorted(unknown)}')
  images, labels, ids = [], [], []
  shape = None
  for label in (NEGATIVE, POSITIVE):
    folder = FOLDERS[label]
    entry = manifest['classes'].get(folder)
    path = os.path.join(out_dir, folder)
    present = ([f for f in os.listdir(path) if not layout.is_junk(f, backslash=False)]
               if os.path.isdir(path) else [])
    names = sorted(f for f in present if f.endswith('.png'))
    if len(names) < len(present):  # (an export writes PNGs only)
      others = sorted(set(present) - set(names))
      logging.info('%s: not reading %d files that are not PNG images: %s', path, len(others),
                   layout.some_names(others))
    if entry is None:
      if names:
        raise ValueError(f'{path} has {len(names)} images but the manifest does not list it')
      continue
    expected = _file_names(max(0, int(entry.get('count', 0))))
    if names != expected:
      raise ValueError(f'{path} holds {len(names)} images named {names[:1]}...{names[-1:]}, '
                       f'but the manifest says {entry.get("count")} named {expected[:1]}...')
    replaced = ValueError(f'{path} was replaced while it was read (an export running?): '
                          'read it again once the export is done')
    export_again = 'export this class again (--config.mode=generate in its generator workdir)'
    try:
      folder_id = os.stat(path).st_ino
      class_pixels = []
      for name in names:
        try:
          with Image.open(os.path.join(path, name)) as image:
            mode = image.mode
            pixels = np.asarray(image.convert('L'))
        except FileNotFoundError:
          raise
        except (OSError, ValueError, SyntaxError, EOFError) as e:  # (a damaged file)
          raise ValueError(f'{path}/{name} cannot be read ({e}): {export_again}') from None
        if mode != 'L':  # (a 16-bit copy converts to white, a colour one to its luminance)
          raise ValueError(f'{path}/{name} is a {mode} image, not the 8-bit grayscale the '
                           f'export wrote (re-saved since?): {export_again}')
        if shape is None:
          shape, first = pixels.shape, name
        elif pixels.shape != shape:
          raise ValueError(f'{path}/{name} is {pixels.shape}, {first} is {shape}: '
                           f'{export_again}')
        class_pixels.append(pixels)
        ids.append(f'{folder}/{name}')
      # An export replacing this class while it was read would mix two image sets.
      if os.stat(path).st_ino != folder_id or read_manifest(out_dir)['classes'].get(
          folder) != entry:
        raise replaced
      if class_pixels and 'pixels_sha256' in entry and (
          pixels_digest(np.stack(class_pixels)) != entry['pixels_sha256']):
        raise ValueError(f'{path} holds other images than the export wrote (their pixels differ '
                         f'from {MANIFEST}\'s pixels_sha256: edited since?): {export_again}')
      images += class_pixels
      labels += [label] * len(class_pixels)
    except FileNotFoundError:  # the folder was moved aside, or a file went with it
      raise replaced from None
  if not images:
    raise ValueError(f'{out_dir} holds no synthetic images')
  return Examples(images=(np.stack(images)[..., None] / np.float32(255.0)).astype(np.float32),
                  labels=np.asarray(labels, np.int32), ids=np.asarray(ids))
