"""Applies a trained BrainCNN or BrainCVAE run to new scans.

Command: `python launch.py --config=configs/predict.py --config.model_dir=<run>
--config.input=<file, folder or zip> --workdir=<out>`. Notebook: `predict_paths(run_dir,
inputs)`. The model, its preprocessing and the anomaly rules' hyperparameters come from
the run's config.json, best checkpoint and metrics.json; the user retypes nothing.

What the command writes in its workdir:
- predictions.csv: one row per input file: path (relative to the input), status (`ok`
  or `skipped: <reason>`), predicted_label (1 tumour, 0 healthy), score (tumour
  probability for a BrainCNN; the leading rule's score for a BrainCVAE), for a BrainCVAE
  score_<rule> / predicted_<rule> for every rule used, and true_label (1 under a `yes`
  folder, 0 under `no`, empty otherwise).
- metrics.json: counts (inputs, predicted, skipped, near-duplicates) and, when some
  predicted inputs have labels, accuracy, balanced accuracy, sensitivity, specificity,
  precision, F1, ROC AUC and the confusion matrix (tn, fp, fn, tp); a class no input is
  labelled with has no recall (sensitivity or specificity: null, as ROC AUC).
- BrainCVAE runs: maps/<path>.npy, the reconstruction-error map in the original file's
  pixel grid (float32, larger = more anomalous, 0 outside the head); regions/<path>.png,
  the leading rule's tumour region in that grid, inside the head (0/255; empty where the
  rule calls the slice healthy);
  overlays/<path>.png, the map over the scan with the region outlined. <path> keeps the
  file's extension (maps/yes/y1.jpg.npy), so y1.jpg and y1.png never collide.
- Rules ('selected' by default): the rule the run selected on validation (metrics.json:
  selected_rule), with the hyperparameters it chose (metrics.json: <rule>_<name>); global
  KMeans also uses the centroids the run fitted (global_kmeans_centroids.npy).

A file that cannot be decoded or holds no head is a skipped row and a count in the
log, never a crash; the input is only ever read.
"""
import concurrent.futures
import dataclasses
import functools
import importlib
import os
import shutil
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import numpy as np
from PIL import Image
from scipy import special

from brainjax import threads
from brainjax.anomaly import maps as anomaly_maps
from brainjax.data import dedup
from brainjax.data import image_io
from brainjax.data import inputs as inputs_lib
from brainjax.data import layout
from brainjax.data import phantom
from brainjax.data import preprocess as preprocess_lib
from brainjax.data import sources
from brainjax.evaluation import classification
from brainjax.tasks import runs
from brainjax.train import parallel
from brainjax.train import reporting
from brainjax.train import reruns


# ----------------------------------------------------------------------------- inputs


class Item(NamedTuple):
  """One input: its name, label (or None) and how to get its raw image."""
  path: str
  label: Optional[int]
  load: Callable[[], np.ndarray]
  in_zip: bool = False  # (its path's backslashes separate folders)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """Items after decoding and preprocessing; status 'ok' or 'skipped: <reason>'."""
  items: List[Item]
  status: List[str]
  images: np.ndarray  # float32 (num ok, S, S, 1), in the order of the ok items
  infos: List[preprocess_lib.CropInfo]  # one per ok item
  ok: np.ndarray  # int indices of the ok items
  # float32 (num ok, 32, 32): dedup.raw_thumbnail of each ok item's whole file, the view that
  # finds the copies the preprocessed one misses (dedup_against, as the grouped split); None
  # unless `prepare` was asked for them
  raw_thumbnails: Optional[np.ndarray] = None


def _prepare_one(item: Item, size: int, margin: float, thumbnail: bool):
  try:
    raw = image_io.to_gray_float(item.load())  # (once, for the slice and its thumbnail)
    image, info = preprocess_lib.preprocess(raw, size=size, margin=margin)
    return image, info, 'ok', dedup.raw_thumbnail(raw) if thumbnail else None
  except (ValueError, OSError) as e:  # UnreadableImage, BlankImage, odd shapes
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None, None, f'skipped: {reason}', None


def _threads(num_threads: int) -> int:
  return num_threads if num_threads > 0 else threads.num_workers()


def prepare(items: Sequence[Item], size: int, margin: float, num_threads: int = 0,
            thumbnails: bool = False) -> Prepared:
  """Decodes and preprocesses every item in parallel threads (PIL/SciPy release the GIL);
  `thumbnails`: their raw files' too (about 1 ms each), for dedup_against."""
  items = list(items)
  with concurrent.futures.ThreadPoolExecutor(_threads(num_threads)) as pool:
    results = list(pool.map(lambda it: _prepare_one(it, size, margin, thumbnails), items))
  status = [r[2] for r in results]
  ok = np.array([i for i, s in enumerate(status) if s == 'ok'], np.int64)
  images = np.zeros((len(ok), size, size, 1), np.float32)
  for j, i in enumerate(ok):
    images[j, ..., 0] = results[i][0]
  for item, s in zip(items, status):
    if s != 'ok':
      logging.info('%s: %s', item.path, s)
  raw_thumbnails = None
  if thumbnails:
    raw_thumbnails = np.zeros((len(ok), dedup.THUMB, dedup.THUMB), np.float32)
    for j, i in enumerate(ok):
      raw_thumbnails[j] = results[i][3]
  return Prepared(items, status, images, [results[i][1] for i in ok], ok, raw_thumbnails)


def file_items(files: Sequence[inputs_lib.InputFile], reader: inputs_lib.Reader,
               prefix: str = '') -> List[Item]:
  """Items named prefix + each file's path (the file itself is read by its own path)."""
  return [Item(prefix + f.path, f.label, lambda f=f: reader.read(f), f.in_zip) for f in files]


# ----------------------------------------------------------------------------- predicting


class Predictions(NamedTuple):
  """Model outputs for the ok items (arrays share axis 0).

  score / label: the leading output (CNN probability, or the leading rule).
  rule_scores / rule_labels: per rule (BrainCVAE only; empty for a BrainCNN).
  errors: float32 (N, S*S) normalised reconstruction errors (BrainCVAE) or None.
  region: bool (N, S*S), the leading rule's tumour region (BrainCVAE) or None: its anomalous
    pixels in a slice it calls a tumour, none in one it calls healthy.
  log_odds: float64 (N,), the BrainCNN's logit(tumour) - logit(healthy), or None. ROC AUC
    ranks these: the probability rounds to exactly 1.0 from log-odds of about 37, where
    confident calls, tumour and healthy alike, would tie.
  """
  score: np.ndarray
  label: np.ndarray
  rule_scores: Dict[str, np.ndarray]
  rule_labels: Dict[str, np.ndarray]
  errors: Optional[np.ndarray]
  region: Optional[np.ndarray]
  log_odds: Optional[np.ndarray] = None


def predict_images(run: runs.Run, images: np.ndarray, rules: Sequence[str] = (),
                   batch_size: int = 256) -> Predictions:
  """Scores preprocessed (N, S, S, 1) slices; jitted, in fixed-shape batches (BrainCNN's of
  batch_size, BrainCVAE's maps in its run's own)."""
  n = len(images)
  if n == 0:
    empty = np.zeros((0,), np.float64)
    pixels = int(np.prod(images.shape[1:3]))
    return Predictions(empty, empty.astype(np.int32), {r: empty for r in rules},
                       {r: empty.astype(np.int32) for r in rules},
                       np.zeros((0, pixels), np.float32) if rules else None,
                       np.zeros((0, pixels), bool) if rules else None)
  if run.task == 'cnn_cls':
    # (calls of batch_size, whatever n: the default, 256, is the run's own, so a test slice
    # gets the log-odds its run gave it; a call sized to n rounds otherwise)
    log_odds = runs.task_module('cnn_cls').predict_log_odds(run.model, run.variables, images,
                                                            batch_size)
    probs = special.expit(log_odds)  # float64: 1.0 only from log-odds ~37 on
    return Predictions(probs, (log_odds >= 0).astype(np.int32), {}, {}, None, None, log_odds)
  errors = runs.reconstruction_errors(run, images)  # (in the run's batches: its maps)
  shape = images.shape[1:3]
  outputs = {r: runs.apply_rule(run, r, errors, shape) for r in rules}
  lead = outputs[rules[0]]
  return Predictions(
      np.asarray(lead.score, np.float64), np.asarray(lead.prediction, np.int32),
      {r: np.asarray(o.score, np.float64) for r, o in outputs.items()},
      {r: np.asarray(o.prediction, np.int32) for r, o in outputs.items()},
      errors, lead.tumour_region())


# ----------------------------------------------------------------------------- notebook API


def _missing(path: str):
  raise image_io.UnreadableImage(f'no such file: {path}')


def _is_one_image(x) -> bool:
  """An (H, W) or (H, W, 1-4) array, not a stack of images (N, H, W[, C])."""
  return isinstance(x, np.ndarray) and (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] <= 4))


def _as_items(inputs, reader: inputs_lib.Reader) -> List[Item]:
  """Paths (files, folders, zips) and arrays -> Items."""
  if isinstance(inputs, (str, os.PathLike, Image.Image)):
    inputs = [inputs]
  elif hasattr(inputs, '__array__') or hasattr(inputs, '__array_interface__'):
    # (an image or a stack of them: NumPy, JAX, a PIL image; a JAX image was iterated by rows)
    inputs = np.asarray(inputs)
    if _is_one_image(inputs):
      inputs = [inputs]
  items = []
  for i, x in enumerate(inputs):
    if isinstance(x, (str, os.PathLike)) and not os.path.exists(x):
      items.append(Item(os.fspath(x), None, functools.partial(_missing, os.fspath(x))))
    elif isinstance(x, (str, os.PathLike)):
      files = _files_to_read(x)
      if os.path.isdir(x) or len(files) != 1 or files[0].in_zip:
        # Only the name shown changes: a zip member is read by its path in the zip.
        items += file_items(files, reader, prefix=os.path.join(os.fspath(x), ''))  # (one '/')
      else:
        items += file_items([dataclasses.replace(files[0], path=os.fspath(x))], reader)
    elif isinstance(x, Image.Image):  # (np.asarray gives a palette's indices, CMYK as RGBA)
      items.append(Item(f'array_{i}', None, functools.partial(image_io.pil_image_to_gray, x)))
    else:
      array = np.asarray(x)
      items.append(Item(f'array_{i}', None, lambda a=array: a))
  return items


def predict_paths(run_dir: str, inputs, rules: str = 'selected', batch_size: int = 256,
                  num_threads: int = 0, maps: bool = True) -> List[Dict[str, Any]]:
  """Predicts image files, folders, zips or arrays with a trained run; nothing is written.

  Args:
    run_dir: the workdir of a cnn_cls or cvae_cls run.
    inputs: a path or an image array (NumPy, JAX, or a PIL image), or a list of paths (file,
      folder searched recursively, zip) and (H, W[, C]) image arrays (any dtype
      image_io.to_gray_float accepts), or a stack of images (N, H, W[, C]).
    rules: BrainCVAE only: 'selected', 'all', or rule names (see configs/predict.py).
    maps: BrainCVAE only: include 'map' and 'region' in the original grid.

  Returns:
    One dict per input file/array, in order: path, status ('ok' or 'skipped: ...'),
    true_label (from yes/ no/ folders, or None), and for ok inputs predicted_label, score
    and, for a BrainCVAE, scores / predicted_labels per rule, rule (the leading one),
    map (float32 (H, W)) and region (bool (H, W)).
  """
  run = runs.load_run(run_dir)
  used = runs.run_rules(run, rules)
  with inputs_lib.Reader() as reader:
    prepared = prepare(_as_items(inputs, reader), run.image_size, run.margin, num_threads)
  preds = predict_images(run, prepared.images, used, batch_size)
  records = _records(prepared, preds, used)
  if run.task == 'cvae_cls' and maps:
    for j, i in enumerate(prepared.ok):
      records[i]['map'], records[i]['region'] = anomaly_maps.original_grid_outputs(
          prepared.images[j, ..., 0], preds.errors[j], preds.region[j], prepared.infos[j])
  return records


def _records(prepared: Prepared, preds: Predictions, rules: Sequence[str]):
  """One dict per input (see predict_paths), without maps; `rules`: those applied (none for
  a BrainCNN), the leading one first."""
  records = [dict(path=it.path, status=s, true_label=it.label)
             for it, s in zip(prepared.items, prepared.status)]
  for j, i in enumerate(prepared.ok):
    records[i].update(predicted_label=int(preds.label[j]), score=float(preds.score[j]))
    if rules:
      records[i].update(rule=rules[0], scores={r: float(preds.rule_scores[r][j]) for r in rules},
                        predicted_labels={r: int(preds.rule_labels[r][j]) for r in rules})
  return records


# ----------------------------------------------------------------------------- the command


def _csv_rows(prepared: Prepared, preds: Predictions, rules: Sequence[str]):
  """(columns, rows) of predictions.csv: _records flat, a rule's values in columns of its own."""
  fields = ['path', 'status', 'predicted_label', 'score']
  for r in rules:
    fields += [f'score_{r}', f'predicted_{r}']
  fields.append('true_label')
  rows = []
  for record in _records(prepared, preds, rules):
    scores, labels = record.pop('scores', {}), record.pop('predicted_labels', {})
    record.pop('rule', None)
    record['true_label'] = '' if record['true_label'] is None else record['true_label']
    for r in scores:
      record.update({f'score_{r}': scores[r], f'predicted_{r}': labels[r]})
    rows.append(record)
  return fields, rows


def labelled_metrics(labels: np.ndarray, predictions: np.ndarray,
                     scores: np.ndarray) -> Dict[str, float]:
  """External-validation metrics of the labelled, predicted inputs.

  A ratio whose denominator is empty is undefined (NaN, null in metrics.json), not
  scikit-learn's zero_division 0: a folder of tumour slices alone has no specificity, and
  0.0 would read as every healthy slice missed; a folder of healthy slices all called
  healthy has no precision, recall or F1 (0.0 would read as a failure); nor is a macro
  average over such a ratio defined.
  """
  metrics = classification.classification_metrics(labels, predictions, scores)
  labels = np.asarray(labels)
  if not (labels == 1).any():
    metrics['recall'] = float('nan')
  if not (labels == 0).any():
    metrics['specificity'] = float('nan')
  if metrics['tp'] + metrics['fp'] == 0:  # nothing called tumour
    metrics['precision'] = float('nan')
  if 2 * metrics['tp'] + metrics['fp'] + metrics['fn'] == 0:  # F1 = 2tp / (2tp + fp + fn)
    metrics['f1'] = float('nan')
  # The macro averages run over the classes in the labels or the predictions (scikit-learn's):
  # one a class is predicted but never labelled with (or the reverse) averages in such a ratio.
  tn, fp, fn, tp = (metrics[k] for k in ('tn', 'fp', 'fn', 'tp'))
  if (tp + fn == 0 and fp) or (tn + fp == 0 and fn):  # a recall of an unlabelled class
    metrics['macro_recall'] = float('nan')
  if (tp + fp == 0 and fn) or (tn + fn == 0 and fp):  # a precision of an unpredicted class
    metrics['macro_precision'] = float('nan')
  metrics['sensitivity'] = metrics['recall']
  metrics['num_labelled'] = int(len(labels))
  return metrics


MAP_FOLDERS = {'maps': '.npy', 'regions': '.png', 'overlays': '.png'}


def _write_map_outputs(workdir: str, item: Item, image: np.ndarray, errors: np.ndarray,
                       region: np.ndarray, info: preprocess_lib.CropInfo) -> Optional[str]:
  """maps/, regions/ and overlays/ of one input (re-reads the scan for the overlay).

  Returns None, or why they could not be written (e.g. a name too long for the file system).
  """
  map_orig, region_orig = anomaly_maps.original_grid_outputs(image, errors, region, info)
  rel = inputs_lib.safe_relpath(item.path, backslash=item.in_zip)
  paths = {k: os.path.join(workdir, k, rel + ext) for k, ext in MAP_FOLDERS.items()}
  try:
    for p in paths.values():
      os.makedirs(os.path.dirname(p), exist_ok=True)
    np.save(paths['maps'], map_orig)
    # Fast zlib level: PNG encoding is otherwise most of a BrainCVAE prediction's time.
    Image.fromarray(region_orig.astype(np.uint8) * 255).save(paths['regions'], compress_level=1)
    scan = image_io.to_gray_float(item.load())
    Image.fromarray(anomaly_maps.overlay(scan, map_orig, region_orig)).save(
        paths['overlays'], compress_level=1)
  except (OSError, image_io.UnreadableImage) as e:
    return getattr(e, 'strerror', None) or str(e)
  return None


def _check_input_outside_map_folders(workdir: str, input_path: str):
  """The map folders are replaced by each prediction: they must not hold its input."""
  for name in MAP_FOLDERS:
    if layout.is_inside(input_path, os.path.join(workdir, name)):
      raise ValueError(f'input {input_path!r} lies in an output folder of --workdir {workdir!r}, '
                       'which a prediction replaces: choose another --workdir')


def _clear_outputs(workdir: str):
  """Removes an earlier prediction's metrics.json, predictions.csv, maps/, regions/ and
  overlays/ from this workdir."""
  present = [name for name in ('predictions.csv', *MAP_FOLDERS)
             if os.path.lexists(os.path.join(workdir, name))]
  if present:  # (the README says so; the run's log did not)
    logging.warning('%s: replacing the outputs of an earlier prediction there (%s).', workdir,
                    ', '.join(present))
  reporting.remove_metrics_json(workdir)
  for path in (os.path.join(workdir, name) for name in ('predictions.csv', *MAP_FOLDERS)):
    if os.path.islink(path) or os.path.isfile(path):  # a link: dropped, never what it points to
      os.unlink(path)
    elif os.path.isdir(path):
      shutil.rmtree(path)


def _drop_near_duplicates(config, workdir: str, run: runs.Run, prepared: Prepared,
                          reader: inputs_lib.Reader) -> Tuple[Prepared, int]:
  """(`prepared` with the inputs that are near-duplicates of config.dedup_against's images
  skipped, how many)."""
  if not config.dedup_against or not len(prepared.ok):
    return prepared, 0
  # (named by their folder too: their log lines are not the input's rows)
  reference = prepare(file_items(_files_to_read(config.dedup_against, workdir), reader,
                                 prefix=f'{config.dedup_against}: '),
                      run.image_size, run.margin, config.num_threads, thumbnails=True)
  if not len(reference.ok):
    raise ValueError(f'dedup_against={config.dedup_against!r} holds no readable images')
  # Linked in either view, as the grouped split links two slices (datasets.split): a blurred
  # or sharpened copy can fall below the threshold once cropped and rescaled.
  duplicate = np.asarray(dedup.near_duplicates_of(
      prepared.images, reference.images, config.dedup_threshold,
      extra_views=[(prepared.raw_thumbnails, reference.raw_thumbnails)]), bool)
  status = list(prepared.status)
  for i in prepared.ok[duplicate]:
    status[i] = 'skipped: near-duplicate of a dedup_against image'
  keep = ~duplicate
  logging.info('%d of %d inputs are near-duplicates (correlation > %g) of the %d images in %s; '
               'skipped.', int(duplicate.sum()), len(duplicate), config.dedup_threshold,
               len(reference.ok), config.dedup_against)
  return dataclasses.replace(
      prepared, status=status, images=prepared.images[keep], ok=prepared.ok[keep],
      infos=[info for info, k in zip(prepared.infos, keep) if k],
      raw_thumbnails=prepared.raw_thumbnails[keep]), int(duplicate.sum())


def _smoke_model_config(config):
  """The config of the tiny run smoke mode trains (on this predict's devices)."""
  sub = importlib.import_module(f'configs.{config.smoke_task}').get_config('real,smoke')
  sub.num_devices = config.num_devices
  return sub


def _smoke_inputs(config, workdir):
  """Smoke mode: a tiny trained run and phantom slices when none are given."""
  model_dir, input_path = config.model_dir, config.input
  if not model_dir:
    model_dir = os.path.join(workdir, f'smoke_model_{config.smoke_task}')  # one per task
    if not os.path.isfile(os.path.join(model_dir, 'metrics.json')):
      sub = _smoke_model_config(config)
      count = len(parallel.train_devices(config.num_devices))
      if sub.batch_size % count:  # (the batch is the smoke model's, not predict's own)
        raise ValueError(f'smoke mode trains its {config.smoke_task} model at batch_size='
                         f'{sub.batch_size}, which does not split across {count} devices: set '
                         f'num_devices to one of {parallel.fitting_device_counts(sub.batch_size)}')
      sub.cache_dir = sources.resolve_cache_dir(config.cache_dir)
      os.makedirs(model_dir, exist_ok=True)
      reruns.write_config(model_dir, sub)
      logging.info('Smoke: training a tiny %s run in %s.', config.smoke_task, model_dir)
      importlib.import_module(f'brainjax.tasks.{config.smoke_task}').train_and_evaluate(
          sub, model_dir)
  if not input_path:
    input_path = os.path.join(workdir, 'smoke_input')
    shutil.rmtree(input_path, ignore_errors=True)  # this mode's own: a rerun's count replaces it
    write_phantom_folder(input_path, config.data.num_per_class, seed=config.data.seed + 1)
  return model_dir, input_path


def write_phantom_folder(folder: str, num_per_class: int, seed: int) -> List[str]:
  """Writes phantom slices as PNGs into folder/yes and folder/no; returns their paths."""
  written = []
  for positive, sub in ((True, 'yes'), (False, 'no')):
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for i in range(num_per_class):
      path = os.path.join(folder, sub, f'phantom_{i}.png')
      Image.fromarray(phantom.phantom_slice(seed, i, positive).image).save(path)  # lossless
      written.append(path)
  return written


def check_config(config):
  """A ValueError or FileNotFoundError for settings no prediction can use, before launch.py
  writes anything: the batch, the model run and the rules it can apply, the input."""
  if config.batch_size < 1:
    raise ValueError(f'batch_size={config.batch_size}: it must be at least 1')
  if config.num_threads < 0:  # (it was taken as 0 without a word)
    raise ValueError(f'num_threads={config.num_threads}: it must be 0 (one per usable core) or '
                     'more')
  if config.dedup_against and not os.path.exists(config.dedup_against):
    raise FileNotFoundError(f'dedup_against={config.dedup_against!r} does not exist')
  if config.input or not config.get('smoke'):  # (smoke mode draws phantom slices if none)
    inputs_lib.check_input(config.input)  # (a wrong path fails here, before any output)
  elif config.data.num_per_class < 1:  # (it trained a model, then predicted no file)
    raise ValueError(f'data.num_per_class={config.data.num_per_class}: smoke mode draws that '
                     'many phantom slices per class to predict; it must be at least 1')
  if config.model_dir:
    run_config = runs.load_run_config(config.model_dir)
    task = run_config.get('task')
    if task not in runs.MODEL_TASKS:
      raise ValueError(f'{config.model_dir!r} is a {task!r} run; predict needs a '
                       f'{" or ".join(runs.MODEL_TASKS)} run')
  elif config.get('smoke'):  # (it trains a model of smoke_task)
    task = config.smoke_task
    if task not in runs.MODEL_TASKS:
      raise ValueError(f'smoke_task={task!r}; expected one of {runs.MODEL_TASKS}')
    seed = config.data.seed  # (its phantom slices are drawn after the model has trained)
    if not (isinstance(seed, int) and 0 <= seed < 2 ** 32 - 1):
      raise ValueError(f'data.seed={seed!r}: it must be an integer in [0, 2**32 - 1)')
    parallel.train_devices(config.num_devices)  # (those it trains that model on)
    run_config = _smoke_model_config(config)
  else:
    raise ValueError('set --config.model_dir to the workdir of a trained cnn_cls or cvae_cls run')
  runs.check_rules(task, config.rules)
  # Every call is padded to batch_size slices (the run's own batches): 10**9 was a
  # 60 TiB allocation's traceback once the model and inputs had loaded.
  size = run_config.get('data', {}).get('image_size')
  if isinstance(size, int):  # (a run config without it is refused as it loads, in one line)
    threads.check_fits_in_memory(config.batch_size * size * size * 4,
                                 f'batch_size={config.batch_size} slices of {size}x{size}',
                                 'lower batch_size')


def _files_to_read(input_path, workdir=None):
  """The files of an input (or of dedup_against), less those of predict workdirs inside it
  (outputs, not scans), `workdir` (this prediction's) included."""
  files = inputs_lib.list_inputs(input_path)  # before loading: a wrong path fails fast
  if not files:
    logging.warning('%s holds no files.', input_path)
  # Predict workdirs in the input (this one, or an earlier run's). A workdir holding the
  # input (smoke mode writes it there) is not in it.
  outputs = [folder for folder, task in layout.run_folders(
      f.source for f in files if not f.in_zip).items() if task == 'predict']
  own = workdir and os.path.realpath(workdir) + os.sep
  if own and own.startswith(os.path.realpath(input_path) + os.sep):
    outputs.append(own)
  kept = [f for f in files if f.in_zip or not os.path.realpath(f.source).startswith(tuple(outputs))]
  if len(kept) < len(files):
    logging.info('Not reading %d files of predict workdirs in %s.', len(files) - len(kept),
                 input_path)
  return kept


def _write_maps(config, workdir, prepared, preds) -> Tuple[Prepared, int]:
  """Writes each predicted file's map and region; returns (`prepared` with the status of those
  that could not be written saying why, how many)."""
  with concurrent.futures.ThreadPoolExecutor(_threads(config.num_threads)) as pool:
    failures = list(pool.map(lambda j: _write_map_outputs(
        workdir, prepared.items[prepared.ok[j]], prepared.images[j, ..., 0],
        preds.errors[j], preds.region[j], prepared.infos[j]), range(len(prepared.ok))))
  status = list(prepared.status)
  for i, failure in zip(prepared.ok, failures):
    if failure:
      status[i] = f'ok; maps not written: {failure}'
  num_failed = sum(1 for failure in failures if failure)
  if num_failed:
    logging.warning('%d maps not written; see the status column of predictions.csv.', num_failed)
  return dataclasses.replace(prepared, status=status), num_failed


def _metrics_of_labelled_files(prepared, preds, rules):
  """The metrics of the files whose folders give their label (yes/, no/); {} if none do."""
  labels = np.array([prepared.items[i].label for i in prepared.ok], object)
  known = np.array([l is not None for l in labels], bool)
  if not known.any():
    return {}
  y = labels[known].astype(np.int32)
  ranked = preds.score if preds.log_odds is None else preds.log_odds
  metrics = labelled_metrics(y, preds.label[known], ranked[known])
  for r in rules[1:]:
    extra = labelled_metrics(y, preds.rule_labels[r][known], preds.rule_scores[r][known])
    metrics.update({f'{r}_{k}': v for k, v in extra.items()})
  logging.info('Labelled inputs: %d; accuracy %.4f, balanced accuracy %.4f, ROC AUC %s.',
               int(known.sum()), metrics['accuracy'], metrics['balanced_accuracy'],
               metrics['auroc'])
  return metrics


def train_and_evaluate(config, workdir):
  """Predicts config.input with the run in config.model_dir; writes into workdir."""
  start = time.perf_counter()
  model_dir, input_path = config.model_dir, config.input
  # (launch.py checks these first; here for a direct caller, before smoke mode writes its
  # inputs: a refused run changes nothing)
  check_config(config)
  if config.get('smoke'):
    model_dir, input_path = _smoke_inputs(config, workdir)
  files = _files_to_read(input_path, workdir)
  _check_input_outside_map_folders(workdir, input_path)
  # An earlier prediction's outputs: none until this one's are written (config.json, which
  # launch.py has rewritten, describes this one; a refused or killed one leaves none).
  _clear_outputs(workdir)
  run = runs.load_run(model_dir)
  rules = runs.run_rules(run, config.rules)
  logging.info('Predicting %d files of %s with the %s run %s%s.', len(files), input_path,
               run.task, model_dir, f' (rules: {", ".join(rules)})' if rules else '')

  seconds = {'load': time.perf_counter() - start}
  num_without_maps = 0
  with inputs_lib.Reader() as reader:
    tick = time.perf_counter()
    prepared = prepare(file_items(files, reader), run.image_size, run.margin, config.num_threads,
                       thumbnails=bool(config.dedup_against))
    num_unreadable = len(files) - len(prepared.ok)
    prepared, num_duplicates = _drop_near_duplicates(config, workdir, run, prepared, reader)
    seconds['preprocess'], tick = time.perf_counter() - tick, time.perf_counter()
    preds = predict_images(run, prepared.images, rules, config.batch_size)
    seconds['model'], tick = time.perf_counter() - tick, time.perf_counter()
    if rules and config.write_maps:
      prepared, num_without_maps = _write_maps(config, workdir, prepared, preds)
      seconds['maps'] = time.perf_counter() - tick

  fields, rows = _csv_rows(prepared, preds, rules)
  reporting.write_csv(os.path.join(workdir, 'predictions.csv'), fields, rows)
  seconds['total'] = time.perf_counter() - start
  metrics = dict(num_inputs=len(files), num_predicted=len(prepared.ok),
                 num_skipped=len(files) - len(prepared.ok), num_unreadable=num_unreadable,
                 num_near_duplicates=num_duplicates, num_without_maps=num_without_maps,
                 model_task=run.task,
                 model_dir=os.path.abspath(model_dir),
                 **{f'seconds_{k}': v for k, v in seconds.items()})
  if rules:
    metrics['rule'] = rules[0]
  if num_unreadable:
    logging.warning('%d of %d files skipped (unreadable, not an image, or no head); see the '
                    'status column of predictions.csv.', num_unreadable, len(files))
  metrics.update(_metrics_of_labelled_files(prepared, preds, rules))
  reporting.write_metrics_json(workdir, metrics)
  logging.info('Predicted %d of %d files in %.1f s (%s); wrote %s.', len(prepared.ok),
               len(files), seconds['total'],
               ', '.join(f'{k} {v:.1f} s' for k, v in seconds.items() if k != 'total'),
               os.path.join(workdir, 'predictions.csv'))
  return metrics
