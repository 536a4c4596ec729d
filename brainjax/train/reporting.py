"""What a run writes besides checkpoints and config.json (reruns.py): metrics.json, a
classifier's eval_ids.json and test_scores.npz, Table 1 rows, TensorBoard scalars, image
grids."""
import contextlib
import csv
import json
import math
import os
import time

import numpy as np
from PIL import Image
from tensorboardX import event_file_writer
from tensorboardX import summary as tensorboard_summary
from tensorboardX.proto import event_pb2


def _json_number(value):
  if value is None:  # read back from a metrics.json
    return None
  value = float(value)
  return value if math.isfinite(value) else None  # JSON has no NaN; null says "undefined"


@contextlib.contextmanager
def atomic_open(path, mode='w', **kwargs):
  """open() for writing whose file appears at `path` only once fully written; one that fails
  (a full disk) or is interrupted leaves no partial file behind.

  The partial file is path + '.tmp', a fixed name: a workdir is locked to one process.
  """
  path = os.fspath(path)
  tmp = path + '.tmp'
  try:
    with naming(path), open(tmp, mode, **kwargs) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):  # (the write's error is the one to report)
      os.remove(tmp)
    raise


@contextlib.contextmanager
def naming(path):
  """An OSError that names no file (a write or close that found the disk full) names `path`:
  the run's one-line error said "No space left on device", and not where (an export may be on
  another disk than the workdir)."""
  try:
    yield
  except OSError as error:
    if error.filename is not None or error.errno is None:
      raise
    raise OSError(error.errno, error.strerror, path) from error


def write_csv(path, fields, rows):
  """Writes dict rows under the header `fields` (a missing field: empty) to `path` (its folder
  made), atomically; text is UTF-8, and a file name that is not (a Latin-1 disk) has its bytes
  escaped."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with atomic_open(path, newline='', encoding='utf-8', errors='backslashreplace') as f:
    writer = csv.DictWriter(f, fieldnames=fields, restval='')
    writer.writeheader()
    writer.writerows(rows)


def write_metrics_json(workdir, metrics):
  """Writes the flat dict `metrics` (numbers, or strings for names) to workdir/metrics.json."""
  flat = {k: v if isinstance(v, str) else _json_number(v) for k, v in metrics.items()}
  path = os.path.join(workdir, 'metrics.json')
  with atomic_open(path) as f:
    json.dump(flat, f, indent=1, sort_keys=True)
  return path


def remove_metrics_json(workdir):
  """Marks a run unfinished (its metrics.json, if any, no longer describes it)."""
  path = os.path.join(workdir, 'metrics.json')
  if os.path.lexists(path):
    os.remove(path)


def save_array(workdir, name, array):
  """Writes `array` to workdir/name (.npy) atomically; returns the path."""
  path = os.path.join(workdir, name)
  with atomic_open(path, 'wb') as f:
    np.save(f, np.asarray(array))
  return path


def read_metrics_json(workdir):
  with open(os.path.join(workdir, 'metrics.json')) as f:
    return json.load(f)


def eval_ids(**ids):
  """What eval_ids.json holds of each set's slice ids (e.g. val=, test=): sorted strings."""
  return {k: sorted(map(str, v)) for k, v in ids.items()}


def write_eval_ids(workdir, **sets):
  """Records which real slices were validated and tested on (the same for every variant).

  An unchanged file is left as it is: a rerun stopped before it changed its results must
  leave the workdir untouched (reruns.untouched_since), so that its config.json is put back.
  """
  path = os.path.join(workdir, 'eval_ids.json')
  text = json.dumps(eval_ids(**{k: v.ids for k, v in sets.items()}))
  if os.path.isfile(path):
    with open(path) as f:
      if f.read() == text:
        return
  with atomic_open(path) as f:
    f.write(text)


TEST_SCORES = 'test_scores.npz'


def write_test_scores(workdir, test, **scores):
  """Records each test slice's id, label and scores (e.g. score=, or giaem_score=): the score
  named `<prefix>score` is what metrics.json's `<prefix>auroc` is computed from (the study
  draws its ROC curves from them).

  An unchanged file is left as it is, as write_eval_ids leaves its own.
  """
  arrays = dict(id=np.asarray(test.ids, str), label=np.asarray(test.labels, np.int64),
                **{k: np.asarray(v, np.float64) for k, v in scores.items()})
  old = read_test_scores(workdir)
  if old is not None and old.keys() == arrays.keys() and all(
      np.array_equal(old[k], v) for k, v in arrays.items()):
    return
  with atomic_open(os.path.join(workdir, TEST_SCORES), 'wb') as f:
    np.savez(f, **arrays)


def read_test_scores(workdir):
  """{name: array} of a run's test_scores.npz, or None where it has none (a run finished
  before runs wrote it)."""
  path = os.path.join(workdir, TEST_SCORES)
  if not os.path.isfile(path):
    return None
  with np.load(path) as scores:
    return {k: scores[k] for k in scores.files}


class SummaryWriter:
  """TensorBoard scalars written to one event file in the calling thread: what `flush`
  returns after is on disk. (tensorboardX's SummaryWriter writes from a thread of its own,
  flushing every 2 minutes: a killed run lost every scalar since, those logged before its
  last checkpoint included, and its `flush` leaves the events still queued.)"""

  def __init__(self, logdir, purge_step=None):
    os.makedirs(logdir, exist_ok=True)
    # TensorBoard reads a folder's event files in name order, and a name starts with the
    # second its file was made in: the nanosecond suffix orders two files of one second (a
    # run resumed within a second of its killed predecessor, whose events its purge marker
    # must follow) and keeps the second from truncating the first.
    self._writer = event_file_writer.EventsWriter(
        os.path.join(logdir, 'events'), filename_suffix=f'.{time.time_ns():020d}.{os.getpid()}')
    if purge_step is not None:
      # TensorBoard hides the events of earlier files at steps >= purge_step: those a
      # killed run logged after its last checkpoint, which the resumed run logs again.
      self._writer.write_event(event_pb2.Event(
          wall_time=time.time(), step=int(purge_step),
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def add_scalar(self, tag, value, step):
    self._writer.write_event(event_pb2.Event(
        wall_time=time.time(), step=int(step),
        summary=tensorboard_summary.scalar(tag, float(value))))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class _NoWriter:
  def add_scalar(self, tag, value, step):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def summary_writer(workdir, write=True, purge_step=None):
  """TensorBoard event files in workdir/tensorboard (none when not `write`: another host's).

  `purge_step`: the first step this run logs, when a run before it (killed) may have logged
  it too.
  """
  if not write:
    return _NoWriter()
  return SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step)


def image_grid(images):
  """(N, H, W, 1) floats in [0, 1] -> one uint8 (rows*H, 8*W) mosaic, 8 images a row."""
  columns = 8
  images = np.clip(np.asarray(images, np.float32)[..., 0], 0, 1)
  n, h, w = images.shape
  rows = -(-n // columns)
  grid = np.zeros((rows * h, columns * w), np.float32)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = image
  return (grid * 255 + 0.5).astype(np.uint8)


def save_figure(fig, path, dpi):
  """Writes a matplotlib Figure as a PNG at `path` (its folder made), through atomic_open (a
  full disk: the file named, no partial PNG left); returns the path."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with atomic_open(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=dpi)
  return path


def save_image_grid(path, images):
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with atomic_open(path, 'wb') as f:  # (a full disk left an empty PNG)
    Image.fromarray(image_grid(images)).save(f, format='PNG')
  return path
