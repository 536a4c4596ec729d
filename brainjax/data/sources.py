"""Data sources -> preprocessed Examples, cached on disk.

data_cfg fields (ml_collections.ConfigDict):
  dataset: 'phantom' | 'br35h' | 'folder'.
  data_dir: br35h: the unzipped download, a folder holding its zip, or the zip;
    folder: any folder with yes/ and no/ (at its root or one level down), read
    recursively, any image type. Unused by the phantom. (Synthetic exports are training data
    only: tasks read them through synthetic_dirs, never as a source to validate or test on.)
  num_per_class: phantom: slices per class (0 = 1500, the size of Br35H);
    others: 0 = all, N = the first N files per class in sorted file-name order
    (before unusable files are skipped).
  image_size (128), margin (0.05), seed (phantom seed, 0).

Unreadable and blank files are skipped, counted and logged, never fatal;
a source that yields nothing raises ValueError. Preprocessed arrays are
cached under cache_dir as .npz keyed by a hash of the source content (file
names and bytes, or phantom seed/count/version) and the preprocessing
settings; the file is written to a temporary name and renamed, so a crash
never leaves a half-written cache.
"""
import concurrent.futures
import contextlib
import hashlib
import multiprocessing
import os
import secrets
import signal
import sys
import types
import zipfile
from typing import List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from brainjax import threads
from brainjax.data import dedup
from brainjax.data import image_io
from brainjax.data import layout
from brainjax.data import phantom
from brainjax.data import preprocess as preprocess_lib
from brainjax.data import synthetic
from brainjax.data.examples import Examples

DATASETS = ('phantom', 'br35h', 'folder')
PHANTOM_DEFAULT_PER_CLASS = 1500
# Bump when decoding, preprocessing or the phantom changes, so that old caches are not reused
# (2: 16-bit images scaled by their maximum; 3: EXIF orientation applied; 4: files of several
# frames refused; 5: images of text or lines only refused; 6: images under 16 px a side, or
# narrower than 1:12, refused; 7: wide-integer images scaled by their 99.9th percentile, not
# their maximum; 8: float images stretched between percentiles, 16-bit colour refused; 9: a
# head on a grey field of view in black bars cropped to the head; 10: what lies beside the
# head in its box set to background).
PREPROCESS_VERSION = 11  # 11: frame lines along the edge that the head touches set to background
PHANTOM_VERSION = 2  # 2: larger, stronger lesions
_PARALLEL_MIN_JOBS = 200  # below this, worker start-up costs more than it saves


def _cfg(data_cfg, name, default):
  """data_cfg[name] (a ConfigDict or dict), or `default` where it is missing or None."""
  value = data_cfg.get(name, default)
  return default if value is None else value


def _settings(data_cfg):
  size = int(_cfg(data_cfg, 'image_size', 128))
  margin = float(_cfg(data_cfg, 'margin', 0.05))
  n = int(_cfg(data_cfg, 'num_per_class', 0))
  if size < 8:
    raise ValueError(f'data.image_size must be >= 8, got {size}')
  if not 0.0 <= margin < 0.5:
    raise ValueError(f'data.margin must be in [0, 0.5), got {margin}')
  if n < 0:
    raise ValueError(f'data.num_per_class must be >= 0, got {n}')
  seed = _cfg(data_cfg, 'seed', 0)
  if not (isinstance(seed, int) and 0 <= seed < 2 ** 32):
    raise ValueError(f'data.seed must be an integer in [0, 2**32), got {seed!r}')
  # The preprocessed slices are held in memory as float32: all the phantom's (num_per_class is
  # their count), at least one per class of other data (for which it is only a cap);
  # num_per_class=10**12 or image_size=2**20 filled the memory after launch wrote the workdir.
  phantom_data = _cfg(data_cfg, 'dataset', None) == 'phantom'
  per_class = (n or PHANTOM_DEFAULT_PER_CLASS) if phantom_data else 1
  threads.check_fits_in_memory(2 * per_class * size ** 2 * 4,
                               f'{2 * per_class} slices of data.image_size={size}',
                               'lower data.num_per_class or data.image_size')
  return size, margin, n


class Source(NamedTuple):
  """Everything a source yields, row-aligned with examples."""
  examples: Examples
  raw_thumbnails: np.ndarray  # (N, 32, 32) float32 of the whole raw file (for dedup)


def resolve_cache_dir(configured: str = '') -> str:
  """The preprocessing cache folder: the config's cache_dir, else $BRAINJAX_CACHE, else
  ~/.cache/brainjax."""
  return (configured or os.environ.get('BRAINJAX_CACHE')
          or os.path.join(os.path.expanduser('~'), '.cache', 'brainjax'))


def load_source(data_cfg, cache_dir: str) -> Source:
  """Examples and raw-file thumbnails of the configured source.

  The raw thumbnails (whole canvas, 32x32) are a second view for near-duplicate
  grouping: `dedup.near_duplicate_groups(examples.images, t, extra_views=[raw])`.
  """
  check_location(data_cfg)
  dataset = _cfg(data_cfg, 'dataset', None)
  size, margin, n = _settings(data_cfg)
  data_dir = _cfg(data_cfg, 'data_dir', '')
  if dataset == 'phantom':
    seed = int(_cfg(data_cfg, 'seed', 0))
    count = n or PHANTOM_DEFAULT_PER_CLASS
    key = _hash(['phantom', PHANTOM_VERSION, seed, count])
    jobs = [('phantom', f'{folder}/phantom_{index:05d}.png', int(positive), (seed, index))
            for positive, folder in ((False, 'no'), (True, 'yes')) for index in range(count)]
    return _cached(cache_dir, 'phantom', key, size, margin, jobs, with_masks=True)
  if dataset == 'br35h':
    from brainjax.data import br35h  # pylint: disable=g-import-not-at-top  (imports TFDS)
    records = br35h.load_br35h_records(data_dir, os.path.join(cache_dir, 'tfds'))
    jobs = [('bytes', name, label, data) for name, label, data in _first_per_class(records, n)]
    digests = [hashlib.sha256(job[3]).hexdigest() for job in jobs]
  else:
    jobs = _folder_jobs(data_dir, n)
    digests = [file_digest(job[3], layout.MAX_IMAGE_BYTES) for job in jobs]
  key = _hash([dataset] + [(job[1], job[2], d) for job, d in zip(jobs, digests)])
  source = _cached(cache_dir, dataset, key, size, margin, jobs, with_masks=False,
                   source_dir=data_dir)
  _warn_of_files_in_both_classes(jobs, digests, set(source.examples.ids.tolist()), data_dir)
  return source


def _warn_of_files_in_both_classes(jobs, digests, kept, data_dir) -> None:
  """Logs the images (of the files `kept`, those that decoded: a text file in both folders is
  no label noise) whose bytes are in yes/ and in no/: one image under two labels, label noise
  that no split removes. They are kept, as given."""
  names = {}  # digest: {label: first file name}
  for (_, name, label, _), digest in zip(jobs, digests):
    if name in kept:
      names.setdefault(digest, {}).setdefault(label, name)
  both = [' = '.join(sorted(by_label.values())) for by_label in names.values() if len(by_label) > 1]
  if both:
    logging.warning('%s: identical files in yes/ and no/, kept under both labels: %d (%s)',
                    data_dir, len(both), layout.some_names(both, '; '))


def _is_export(folder: Optional[str]) -> bool:
  """Whether folder holds a synthetic export's manifest (another tool's manifest.json is data's)."""
  if not folder or not os.path.isfile(os.path.join(folder, synthetic.MANIFEST)):
    return False
  try:
    synthetic.read_manifest(folder)
  except ValueError:
    return False
  return True


def check_location(data_cfg) -> None:
  """A ValueError unless the configured data could be where it is said to be, with settings
  it can be read with. Cheap (a few stat calls; no file read but a manifest.json the data
  folder holds): launch.py runs it before it writes anything."""
  _settings(data_cfg)
  dataset = _cfg(data_cfg, 'dataset', None)
  if dataset not in DATASETS:
    raise ValueError(f'unknown data.dataset {dataset!r}; valid: {", ".join(DATASETS)}')
  data_dir = _cfg(data_cfg, 'data_dir', '')
  if dataset == 'phantom':
    if data_dir:  # (it trained and tested on the phantom, reported as real, naming the folder)
      raise ValueError(f'data.data_dir={data_dir!r} is set, but data.dataset is phantom, which '
                       'reads no folder: add --config.data.dataset=br35h (the download) or '
                       'folder (yes/ and no/), or leave data.data_dir out')
    return
  if not data_dir:
    raise ValueError(f'data.data_dir must point at the {dataset} data')
  path = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  if not os.path.exists(path):
    where = ('the unzipped Br35H download (yes/ and no/) or its .zip' if dataset == 'br35h'
             else 'a folder of yes/ and no/')
    raise ValueError(f'data.data_dir {path} does not exist: point it at {where}')
  if dataset == 'br35h':
    layout.locate_download(path)
  elif dataset == 'folder':
    if not os.path.isdir(path):
      raise ValueError(f'data.data_dir {path} is not a folder')
    if not layout.has_class_folders(path):
      raise ValueError(f'{path} has no yes/ or no/ folder (at its root or one level down)'
                       f'{layout.misnamed_class_folders(path)}')
  if _is_export(layout.class_root(path) if os.path.isdir(path) else None):
    # (its generated slices would validate and test every classifier, reported as real)
    raise ValueError(f'data.data_dir {path} is a synthetic export ({synthetic.MANIFEST}), not '
                     'real scans: classifiers are validated and tested on real data; train on '
                     'it with --config.train_data=synthetic --config.synthetic_dirs=<it>')


def file_digest(path: str, max_bytes: Optional[int] = None) -> str:
  """SHA-256 of a file's contents ('unreadable: <reason>' when it cannot be read; a file of
  more than max_bytes, which will not be read, is known by its size and modification time)."""
  h = hashlib.sha256()
  try:
    with layout.open_file(path) as f:
      info = os.fstat(f.fileno())
      if max_bytes is not None and info.st_size > max_bytes:
        return f'too large: {info.st_size} bytes, modified {info.st_mtime_ns}'
      for block in iter(lambda: f.read(1 << 20), b''):
        h.update(block)
  except OSError as e:  # the job itself will report the file as unreadable
    return f'unreadable: {e.strerror}'
  return h.hexdigest()


def _hash(parts) -> str:
  return hashlib.sha256(repr(parts).encode()).hexdigest()


def _first_per_class(records: Sequence[Tuple], n: int) -> List[Tuple]:
  """The first n records of each label in file-name order (all if n == 0)."""
  records = sorted(records, key=lambda r: r[0])
  if n == 0:
    return list(records)
  taken = {}
  out = []
  for record in records:
    if taken.get(record[1], 0) < n:
      taken[record[1]] = taken.get(record[1], 0) + 1
      out.append(record)
  return out


def _folder_jobs(root: str, n: int):
  root = os.path.abspath(os.path.expanduser(os.fspath(root)))  # (checked: check_location)
  found = list(layout.iter_folder(root))
  if not found:
    raise ValueError(f'{root}: the yes/ and no/ folders hold no files')
  return [('path', name, label, path) for name, label, path in _first_per_class(found, n)]


# --- per-item work (module-level functions: they run in worker processes) ---

def _run_job(job, size: int, margin: float):
  """job -> (name, label, (image, mask or None, raw thumbnail) or None, skip reason
  or None)."""
  kind, name, label, payload = job
  if kind == 'phantom':
    piece = phantom.phantom_slice(payload[0], payload[1], bool(label))
    image, mask = image_io.to_gray_float(piece.image), piece.mask
  else:
    mask = None
    try:
      image = (image_io.decode_image(payload) if kind == 'bytes'
               else image_io.read_image_file(payload))
    except image_io.UnreadableImage as e:
      return name, label, None, f'unreadable: {e}'
  try:
    out, info = preprocess_lib.preprocess(image, size, margin)
  except preprocess_lib.BlankImage as e:
    return name, label, None, f'blank: {e}'
  if mask is not None:
    mask = preprocess_lib.apply_crop(mask, info, size)
  return name, label, (out, mask, dedup.raw_thumbnail(image)), None


def _run_chunk(jobs, size: int, margin: float):
  """[_run_job(job) for job in jobs]: a worker's share, or all of them in this process."""
  return [_run_job(job, size, margin) for job in jobs]


def _run_jobs(jobs, size: int, margin: float):
  """Runs the jobs in order, in worker processes when there are many."""
  workers = threads.num_workers()
  if workers == 1 or len(jobs) < _PARALLEL_MIN_JOBS:
    return _run_chunk(jobs, size, margin)
  # 'spawn': forking a process that may already run JAX threads can deadlock.
  context = multiprocessing.get_context('spawn')
  chunk = max(1, len(jobs) // (workers * 8))
  others = set(multiprocessing.active_children())
  try:
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      # A terminal's Ctrl-C goes to the workers too, which would print tracebacks (while
      # importing or waiting for work): they start with it blocked, and this process stops
      # them. (submit, not map: an interrupted map cancels its futures, and Python 3.11's
      # pool then fails to mark them broken, with a traceback from its thread.)
      try:
        # (the workers start on the first submits, with this mask, and without the main script)
        with _ctrl_c_blocked(), _main_script_not_rerun():
          futures = [pool.submit(_run_chunk, jobs[i:i + chunk], size, margin)
                     for i in range(0, len(jobs), chunk)]
        return [result for future in futures for result in future.result()]
      except KeyboardInterrupt:
        for worker in set(multiprocessing.active_children()) - others:
          worker.terminate()
        raise
  except (OSError, concurrent.futures.process.BrokenProcessPool) as e:
    logging.warning('Parallel preprocessing failed (%s); running in this process', e)
    return _run_chunk(jobs, size, margin)


@contextlib.contextmanager
def _main_script_not_rerun():
  """Processes spawned meanwhile start without running the main script again.

  A spawned process runs its parent's main script first (as __mp_main__, for functions defined
  there), and launch.py imports JAX, Flax and Orbax: 1.2-3 s of CPU in each worker, which runs
  only this module's functions. Its place in sys.modules holds a bare module meanwhile (no
  file: nothing to run), as for a script read from stdin. One process with launch.py's imports,
  1000 phantom slices with 2 workers, the two ways alternating: 12.1-13.0 s of the workers' CPU
  against 14.8-16.2 s.
  """
  main = sys.modules['__main__']
  sys.modules['__main__'] = types.ModuleType('__main__')
  try:
    yield
  finally:
    sys.modules['__main__'] = main


@contextlib.contextmanager
def _ctrl_c_blocked():
  """SIGINT blocked in the calling thread, so that processes it starts inherit it blocked.

  It does not shield this process: the kernel hands a Ctrl-C to another of its threads (JAX
  runs several), and Python raises it in the main thread at once.
  """
  if not hasattr(signal, 'pthread_sigmask'):  # (not POSIX)
    yield
    return
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --- cache ------------------------------------------------------------------

def _cache_path(cache_dir, dataset, key, size, margin):
  settings = _hash([PREPROCESS_VERSION, size, margin])
  return os.path.join(cache_dir, f'{dataset}_{_hash([key, settings])[:24]}.npz')


def _cached(cache_dir: str, dataset: str, key: str, size: int, margin: float,
            jobs: List[Tuple], with_masks: bool,
            source_dir: Optional[str] = None):
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError as error:  # (e.g. under /proc, which no writability check foresees)
    raise OSError(f'cannot make the preprocessing cache folder {cache_dir} (--config.cache_dir, '
                  f'BRAINJAX_CACHE): {error.strerror or error}') from error
  path = _cache_path(cache_dir, dataset, key, size, margin)
  if os.path.exists(path):
    try:
      result = _read_cache(path)
      logging.info('Loaded %d preprocessed %s examples from cache %s', len(result[0]), dataset,
                   path)
      return result
    # Damaged cache: rebuild it. A truncated or corrupted .npz raises BadZipFile or EOFError.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      logging.warning('Ignoring unreadable cache %s (%s); rebuilding', path, e)
  results = _run_jobs(jobs, size, margin)
  kept = [r for r in results if r[2] is not None]
  skipped = [(r[0], r[3]) for r in results if r[2] is None]
  where = f' in {source_dir}' if source_dir else ''
  _warn_of_skipped(skipped, len(results), f'{dataset} files{where}')
  if not kept:
    raise ValueError(f'no usable images in the {dataset} source{where}: '
                     f'{len(results)} files, all skipped')
  examples = Examples(
      images=np.stack([r[2][0] for r in kept])[..., None].astype(np.float32),
      labels=np.asarray([r[1] for r in kept], np.int32),
      ids=np.asarray([r[0] for r in kept]),
      masks=np.stack([r[2][1] for r in kept]).astype(np.uint8) if with_masks else None)
  source = Source(examples, np.stack([r[2][2] for r in kept]))
  try:
    _write_cache(path, source, skipped)
  except OSError as error:  # (a full or read-only cache folder: the run needs no cache)
    logging.warning('%s; going on without caching.', error)
  else:
    logging.info('Preprocessed %d %s examples (%d skipped); cached at %s', len(examples),
                 dataset, len(skipped), path)
  return source


def _write_cache(path, source: Source, skipped):
  examples = source.examples
  arrays = dict(
      images=examples.images[..., 0], labels=examples.labels, ids=examples.ids.astype(str),
      raw_thumbnails=source.raw_thumbnails,
      skipped_names=np.asarray([s[0] for s in skipped], str),
      skipped_reasons=np.asarray([s[1] for s in skipped], str))
  if examples.masks is not None:
    arrays['masks'] = examples.masks
  try:
    _write_npz(path, arrays)
  except OSError as error:  # (a failed write names no file: "[Errno 28] No space left on device")
    raise OSError(f'cannot write the preprocessing cache {path} (--config.cache_dir, '
                  f'BRAINJAX_CACHE): {error.strerror or error}') from error


def _write_npz(path, arrays):
  """np.savez to `path`, which appears only once fully written."""
  # Made as open() makes files, readable as the umask allows (mkstemp's are the owner's alone,
  # and a cache folder shared by several users was useful to one only).
  tmp = os.path.join(os.path.dirname(path), f'.cache.{secrets.token_hex(8)}.npz.tmp')
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0), 0o666)
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _warn_of_skipped(skipped, total: int, what: str) -> None:
  """Names the first of the (name, reason) pairs skipped of `total` files."""
  if skipped:
    shown = layout.some_names([f'{name} ({reason})' for name, reason in skipped], '; ')
    logging.warning('Skipped %d of %d %s: %s', len(skipped), total, what, shown)


def _read_cache(path) -> Source:
  with np.load(path, allow_pickle=False) as data:
    examples = Examples(images=data['images'][..., None], labels=data['labels'],
                        ids=data['ids'], masks=data['masks'] if 'masks' in data else None)
    raw_thumbnails = data['raw_thumbnails']
    skipped = list(zip(data['skipped_names'].tolist(), data['skipped_reasons'].tolist()))
  # (each run reading the cache says so, as the run that built it did)
  _warn_of_skipped(skipped, len(examples) + len(skipped), f'files (when cache {path} was built)')
  return Source(examples, raw_thumbnails)

