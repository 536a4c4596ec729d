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
  the leading rule's tumour region in that grid, inside the head (0/255);
  overlays/<path>.png, the map over the scan with the region outlined. <path> keeps the
  file's extension (maps/yes/y1.jpg.npy), so y1.jpg and y1.png never collide.
- Rules ('selected' by default): the rule the run selected on validation (metrics.json:
  selected_rule), with the hyperparameters it chose (metrics.json: <rule>_<name>); global
  KMeans also uses the centroids the run fitted (global_kmeans_centroids.npy).

A file that cannot be decoded or holds no head is a skipped row and a count in the
log, never a crash; the input is only ever read.
"""
import concurrent.futures
import csv
import dataclasses
import functools
import importlib
import os
import shutil
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from absl import logging
import jax
import matplotlib
import ml_collections
import numpy as np
from PIL import Image
from scipy import ndimage
from scipy import special

from brainjax import threads
from brainjax.anomaly import evaluate as anomaly_evaluate
from brainjax.anomaly import recon_error
from brainjax.data import dedup
from brainjax.data import image_io
from brainjax.data import inputs as inputs_lib
from brainjax.data import phantom
from brainjax.data import preprocess as preprocess_lib
from brainjax.evaluation import classification
from brainjax.tasks import datasets
from brainjax.train import checkpoints
from brainjax.train import reporting
from brainjax.train import reruns

MODEL_TASKS = ('cnn_cls', 'cvae_cls')
RULES = anomaly_evaluate.RULES
HEAD_LEVEL = 0.05  # preprocessed intensity above which a pixel belongs to the head
HEAD_PART_FRACTION = 0.2  # head parts smaller than this fraction of the largest are specks
OVERLAY_ALPHA = 0.6  # opacity of the map where it is 1
OUTLINE_RGB = (0, 255, 255)


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run rebuilt from its workdir."""
  directory: str
  task: str  # 'cnn_cls' or 'cvae_cls'
  config: ml_collections.ConfigDict
  model: Any
  variables: Any
  metrics: Dict[str, Any]  # its metrics.json ({} if absent)

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  @property
  def margin(self) -> float:
    return float(self.config.data.margin)


def load_run_config(run_dir: str) -> ml_collections.ConfigDict:
  """The config.json a run wrote, with lists turned back into tuples."""
  if not os.path.isfile(os.path.join(run_dir, 'config.json')):
    raise FileNotFoundError(f'{run_dir!r} has no config.json: not the workdir of a brainjax run')
  try:
    return reruns.load_config(run_dir)
  except (ValueError, TypeError, AttributeError) as e:  # (JSONDecodeError is a ValueError)
    raise ValueError(f'{run_dir}/config.json is not a brainjax run config: {e}') from None


def _task_module(task: str):
  # Imported on demand, as launch.py does: a BrainCNN run needs none of the CVAE stack.
  return importlib.import_module(f'brainjax.tasks.{task}')


def load_run(run_dir: str) -> Run:
  """Rebuilds the model of a cnn_cls / cvae_cls run and restores its best checkpoint."""
  config = load_run_config(run_dir)
  if config.get('task') not in MODEL_TASKS:
    raise ValueError(f'{run_dir!r} is a {config.get("task")!r} run; predict needs a '
                     f'{" or ".join(MODEL_TASKS)} run')
  task = _task_module(config.task)
  try:
    model = task.create_model(config)
    # Shapes only: initialising real weights op by op costs seconds of compilation.
    template = jax.eval_shape(
        lambda: task.create_train_state(config, model, jax.random.PRNGKey(0)))
  except (AttributeError, KeyError) as e:  # a hand-edited config.json, or another version's
    raise ValueError(f'{run_dir}/config.json lacks a setting its model needs: {e}') from None
  state = checkpoints.restore_best(run_dir, template)
  metrics = {}
  if os.path.isfile(os.path.join(run_dir, 'metrics.json')):
    metrics = reporting.read_metrics_json(run_dir)
  elif config.task == 'cvae_cls':  # its rules' settings are there
    raise ValueError(f'{run_dir!r} has no metrics.json: the run has not finished (or a rerun of '
                     'it was stopped); run its command again to the end')
  else:
    logging.warning('%s has no metrics.json: the run has not finished (or a rerun of it was '
                    'stopped); predicting with its best checkpoint so far.', run_dir)
  return Run(run_dir, config.task, config, model, state.variables, metrics)


# ----------------------------------------------------------------------------- inputs


class Item(NamedTuple):
  """One input: its name, label (or None) and how to get its raw image."""
  path: str
  label: Optional[int]
  load: Callable[[], np.ndarray]
  in_zip: bool = False  # (its path's backslashes separate folders)


@dataclasses.dataclass
class Prepared:
  """Items after decoding and preprocessing; status 'ok' or 'skipped: <reason>'."""
  items: List[Item]
  status: List[str]
  images: np.ndarray  # float32 (num ok, S, S, 1), in the order of the ok items
  infos: List[preprocess_lib.CropInfo]  # one per ok item
  ok: np.ndarray  # int indices of the ok items


def _prepare_one(item: Item, size: int, margin: float):
  try:
    image, info = preprocess_lib.preprocess(item.load(), size=size, margin=margin)
    return image, info, 'ok'
  except (ValueError, OSError) as e:  # UnreadableImage, BlankImage, odd shapes
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None, None, f'skipped: {reason}'


def _threads(num_threads: int) -> int:
  return num_threads if num_threads > 0 else threads.num_workers()


def prepare(items: Sequence[Item], size: int, margin: float, num_threads: int = 0) -> Prepared:
  """Decodes and preprocesses every item in parallel threads (PIL/SciPy release the GIL)."""
  items = list(items)
  with concurrent.futures.ThreadPoolExecutor(_threads(num_threads)) as pool:
    results = list(pool.map(lambda it: _prepare_one(it, size, margin), items))
  status = [r[2] for r in results]
  ok = np.array([i for i, s in enumerate(status) if s == 'ok'], np.int64)
  images = np.zeros((len(ok), size, size, 1), np.float32)
  for j, i in enumerate(ok):
    images[j, ..., 0] = results[i][0]
  for item, s in zip(items, status):
    if s != 'ok':
      logging.info('%s: %s', item.path, s)
  return Prepared(items, status, images, [results[i][1] for i in ok], ok)


def file_items(files: Sequence[inputs_lib.InputFile], reader: inputs_lib.Reader,
               prefix: str = '') -> List[Item]:
  """Items named prefix + each file's path (the file itself is read by its own path)."""
  return [Item(prefix + f.path, f.label, lambda f=f: reader.read(f), f.in_zip) for f in files]


# ----------------------------------------------------------------------------- the rules


RULE_PARAMS = anomaly_evaluate.RULE_PARAMS
# Global KMeans also needs the two centroids its cvae_cls run fitted on validation.
GLOBAL_CENTROIDS_FILE = anomaly_evaluate.FITTED_ARRAYS[0] + '.npy'


def rule_params(metrics: Dict[str, Any], rule: str) -> Dict[str, float]:
  """The hyperparameters a cvae_cls run selected for `rule` on validation."""
  missing = [f'{rule}_{n}' for n in RULE_PARAMS[rule] if metrics.get(f'{rule}_{n}') is None]
  if missing:
    raise ValueError(f'the run\'s metrics.json lacks {", ".join(missing)}: was the {rule} '
                     'rule evaluated in that run?')
  return {n: float(metrics[f'{rule}_{n}']) for n in RULE_PARAMS[rule]}


def evaluated_rules(metrics: Dict[str, Any]) -> List[str]:
  """The rules whose hyperparameters the run's metrics.json holds, in RULES order."""
  return [r for r in RULES if all(metrics.get(f'{r}_{n}') is not None for n in RULE_PARAMS[r])]


def selected_rule(metrics: Dict[str, Any], selection_metric: str = 'f1') -> str:
  """The rule the run selected on validation (its metrics.json `selected_rule`).

  Runs that predate that key: the rule with the best `<rule>_val_<metric>`.
  """
  if not evaluated_rules(metrics):
    raise ValueError('the run\'s metrics.json holds no anomaly-rule hyperparameters: was the '
                     'cvae_cls run trained to the end?')
  if metrics.get('selected_rule') in evaluated_rules(metrics):
    return metrics['selected_rule']
  try:
    return anomaly_evaluate.select_rule(metrics, selection_metric)
  except ValueError:  # no validation values at all
    return evaluated_rules(metrics)[0]


def rules_to_use(spec: str, metrics: Dict[str, Any], selection_metric: str = 'f1') -> List[str]:
  """config.rules -> rule names, the leading one first.

  'selected': the run's best rule on validation; 'all': every rule the run evaluated,
  the selected one first; otherwise comma-separated names.
  """
  spec = (spec or 'selected').strip()
  if spec in ('selected', 'all'):
    first = selected_rule(metrics, selection_metric)
    if spec == 'selected':
      return [first]
    return [first] + [r for r in evaluated_rules(metrics) if r != first]
  names = [r.strip() for r in spec.split(',') if r.strip()]
  unknown = [r for r in names if r not in RULES]
  if unknown or not names:
    raise ValueError(f'rules={spec!r}: expected selected, all, or names from {", ".join(RULES)}')
  return list(dict.fromkeys(names))


def run_rules(run: Run, spec: str) -> List[str]:
  """rules_to_use for a run: [] for a BrainCNN; the run's own selection metric."""
  if run.task != 'cvae_cls':
    return []
  metric = run.config.get('anomaly', {}).get('selection_metric', 'f1')
  rules = rules_to_use(spec, run.metrics, metric)
  for rule in rules:  # fail before any input is read
    rule_params(run.metrics, rule)
  if 'global_kmeans' in rules:
    global_centroids(run)
  return rules


def reconstruction_errors(run: Run, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """float32 (N, S*S): the normalised errors cvae_cls computes, in fixed-shape jitted batches."""
  reconstruct = _task_module('cvae_cls').Reconstruction(run.model)
  return recon_error.reconstruction_error(reconstruct, images, batch_size=batch_size,
                                          variables=run.variables)


def global_centroids(run: Run) -> np.ndarray:
  """The (2, H*W) centroids (tumour first) the run's global KMeans rule fitted on validation."""
  path = os.path.join(run.directory, GLOBAL_CENTROIDS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is missing: the global_kmeans rule needs the centroids its '
                            'cvae_cls run saves; choose other rules (--config.rules)')
  return np.load(path)


def apply_rule(run: Run, rule: str, errors: np.ndarray, image_shape):
  """The rule's RuleOutput (score, prediction, region) for (N, H*W) normalised errors."""
  max_iter = int(run.config.get('anomaly', {}).get('kmeans_max_iter', 100))
  centroids = global_centroids(run) if rule == 'global_kmeans' else None
  return anomaly_evaluate.apply_rule(rule, errors, rule_params(run.metrics, rule), image_shape,
                                     max_iter, centroids)


# ----------------------------------------------------------------------------- predicting


class Predictions(NamedTuple):
  """Model outputs for the ok items (arrays share axis 0).

  score / label: the leading output (CNN probability, or the leading rule).
  rule_scores / rule_labels: per rule (BrainCVAE only; empty for a BrainCNN).
  errors: float32 (N, S*S) normalised reconstruction errors (BrainCVAE) or None.
  region: bool (N, S*S), the leading rule's region (BrainCVAE) or None.
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


def predict_images(run: Run, images: np.ndarray, rules: Sequence[str] = (),
                   batch_size: int = 256) -> Predictions:
  """Scores preprocessed (N, S, S, 1) slices; jitted, in fixed-shape batches."""
  n = len(images)
  batch = max(1, min(batch_size, n))
  if n == 0:
    empty = np.zeros((0,), np.float64)
    pixels = int(np.prod(images.shape[1:3]))
    return Predictions(empty, empty.astype(np.int32), {r: empty for r in rules},
                       {r: empty.astype(np.int32) for r in rules},
                       np.zeros((0, pixels), np.float32) if rules else None,
                       np.zeros((0, pixels), bool) if rules else None)
  if run.task == 'cnn_cls':
    log_odds = _task_module('cnn_cls').predict_log_odds(run.model, run.variables, images, batch)
    probs = special.expit(log_odds)  # float64: 1.0 only from log-odds ~37 on
    return Predictions(probs, (log_odds >= 0).astype(np.int32), {}, {}, None, None, log_odds)
  errors = reconstruction_errors(run, images, batch)
  shape = images.shape[1:3]
  outputs = {r: apply_rule(run, r, errors, shape) for r in rules}
  lead = outputs[rules[0]]
  return Predictions(
      np.asarray(lead.score, np.float64), np.asarray(lead.prediction, np.int32),
      {r: np.asarray(o.score, np.float64) for r, o in outputs.items()},
      {r: np.asarray(o.prediction, np.int32) for r, o in outputs.items()},
      errors, np.asarray(lead.region, bool))


def head_mask(image: np.ndarray) -> np.ndarray:
  """bool (S, S): the head in a preprocessed slice (its background is 0 by construction).

  Pixels above HEAD_LEVEL, closed (bridging thin dark gaps such as a T1 skull) and
  hole-filled; specks of background noise or text (parts under a fifth of the largest)
  are dropped.
  """
  inside = ndimage.binary_fill_holes(
      ndimage.binary_closing(np.asarray(image) > HEAD_LEVEL, iterations=2))
  labels, count = ndimage.label(inside)
  if count <= 1:
    return inside
  sizes = np.bincount(labels.ravel())[1:]
  keep = np.concatenate([[False], sizes >= HEAD_PART_FRACTION * sizes.max()])
  return keep[labels]


def original_grid_outputs(image: np.ndarray, errors: np.ndarray, region: np.ndarray,
                          info: preprocess_lib.CropInfo):
  """(map float32 (H, W), region bool (H, W)) of one slice, in its original file's grid.

  The map is the normalised error and the region the rule's, both cut to the head: the
  rules see the whole slice, but a tumour outside the head is not one.
  """
  size = image.shape[0]
  head = head_mask(image)
  error_map = np.where(head, errors.reshape(size, size), 0.0).astype(np.float32)
  head_orig = preprocess_lib.to_original_grid(head.astype(np.float32), info) >= 0.5
  map_orig = preprocess_lib.to_original_grid(error_map, info)
  map_orig = np.where(head_orig, np.clip(map_orig, 0.0, 1.0), 0.0).astype(np.float32)
  region_orig = region_to_original(region.reshape(size, size) & head, info) & head_orig
  return map_orig, region_orig


def region_to_original(region: np.ndarray, info: preprocess_lib.CropInfo) -> np.ndarray:
  """A (S, S) binary region of a preprocessed slice -> bool (H, W) in the original grid."""
  return preprocess_lib.to_original_grid(np.asarray(region, np.float32), info) >= 0.5


_HEAT = matplotlib.colormaps['inferno'](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)


def overlay(scan: np.ndarray, map_: np.ndarray, region: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3): the scan in grey, the map as a heat colour, the region outlined."""
  h, w = scan.shape
  map_ = np.clip(map_, 0.0, 1.0)
  heat = _HEAT[(map_ * 255.0 + 0.5).astype(np.uint8)]  # a lookup table: fast on big scans
  alpha = (np.float32(OVERLAY_ALPHA) * map_)[..., None]
  rgb = np.clip(scan, 0.0, 1.0)[..., None] * (1.0 - alpha) + heat * alpha
  if region.any():
    width = max(1, round(max(h, w) / 256))
    outline = region & ~ndimage.binary_erosion(region, iterations=width, border_value=0)
    rgb[outline] = np.asarray(OUTLINE_RGB, np.float32) / 255.0
  return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- notebook API


def _missing(path: str):
  raise image_io.UnreadableImage(f'no such file: {path}')


def _as_items(inputs, reader: inputs_lib.Reader) -> List[Item]:
  """Paths (files, folders, zips) and arrays -> Items."""
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  items = []
  for i, x in enumerate(inputs):
    if isinstance(x, (str, os.PathLike)) and not os.path.exists(x):
      items.append(Item(os.fspath(x), None, functools.partial(_missing, os.fspath(x))))
    elif isinstance(x, (str, os.PathLike)):
      files = inputs_lib.list_inputs(x)
      if os.path.isdir(x) or len(files) != 1 or files[0].in_zip:
        # Only the name shown changes: a zip member is read by its path in the zip.
        items += file_items(files, reader, prefix=f'{os.fspath(x)}/')
      else:
        items += file_items([dataclasses.replace(files[0], path=os.fspath(x))], reader)
    else:
      array = np.asarray(x)
      items.append(Item(f'array_{i}', None, lambda a=array: a))
  return items


def predict_paths(run_dir: str, inputs, rules: str = 'selected', batch_size: int = 256,
                  num_threads: int = 0, maps: bool = True) -> List[Dict[str, Any]]:
  """Predicts image files, folders, zips or arrays with a trained run; nothing is written.

  Args:
    run_dir: the workdir of a cnn_cls or cvae_cls run.
    inputs: a path, or a list of paths (file, folder searched recursively, zip) and
      (H, W[, C]) image arrays (any dtype image_io.to_gray_float accepts).
    rules: BrainCVAE only: 'selected', 'all', or rule names (see configs/predict.py).
    maps: BrainCVAE only: include 'map' and 'region' in the original grid.

  Returns:
    One dict per input file/array, in order: path, status ('ok' or 'skipped: ...'),
    true_label (from yes/ no/ folders, or None), and for ok inputs predicted_label, score
    and, for a BrainCVAE, scores / predicted_labels per rule, rule (the leading one),
    map (float32 (H, W)) and region (bool (H, W)).
  """
  run = load_run(run_dir)
  used = run_rules(run, rules)
  with inputs_lib.Reader() as reader:
    prepared = prepare(_as_items(inputs, reader), run.image_size, run.margin, num_threads)
  preds = predict_images(run, prepared.images, used, batch_size)
  records = [dict(path=it.path, status=s, true_label=it.label)
             for it, s in zip(prepared.items, prepared.status)]
  for j, i in enumerate(prepared.ok):
    record = records[i]
    record.update(predicted_label=int(preds.label[j]), score=float(preds.score[j]))
    if run.task == 'cvae_cls':
      record.update(rule=used[0], scores={r: float(v[j]) for r, v in preds.rule_scores.items()},
                    predicted_labels={r: int(v[j]) for r, v in preds.rule_labels.items()})
      if maps:
        record['map'], record['region'] = original_grid_outputs(
            prepared.images[j, ..., 0], preds.errors[j], preds.region[j], prepared.infos[j])
  return records


# ----------------------------------------------------------------------------- the command


def _csv_rows(prepared: Prepared, preds: Predictions, rules: Sequence[str]):
  fields = ['path', 'status', 'predicted_label', 'score']
  for r in rules:
    fields += [f'score_{r}', f'predicted_{r}']
  fields.append('true_label')
  rows = [dict(path=it.path, status=s, true_label='' if it.label is None else it.label)
          for it, s in zip(prepared.items, prepared.status)]
  for j, i in enumerate(prepared.ok):
    rows[i].update(predicted_label=int(preds.label[j]), score=float(preds.score[j]))
    for r in rules:
      rows[i].update({f'score_{r}': float(preds.rule_scores[r][j]),
                      f'predicted_{r}': int(preds.rule_labels[r][j])})
  return fields, rows


def write_predictions_csv(path: str, fields: Sequence[str], rows: Sequence[Dict[str, Any]]):
  # A file name that is not UTF-8 (a Latin-1 disk) is written with its bytes escaped.
  with reporting.atomic_open(path, newline='', encoding='utf-8', errors='backslashreplace') as f:
    writer = csv.DictWriter(f, fieldnames=fields, restval='')
    writer.writeheader()
    writer.writerows(rows)


def labelled_metrics(labels: np.ndarray, predictions: np.ndarray,
                     scores: np.ndarray) -> Dict[str, float]:
  """External-validation metrics of the labelled, predicted inputs.

  The recall of a class no input is labelled with is undefined (NaN, null in
  metrics.json), not scikit-learn's zero_division 0: a folder of tumour slices
  alone has no specificity, and 0.0 would read as every healthy slice missed.
  """
  metrics = classification.classification_metrics(labels, predictions, scores)
  labels = np.asarray(labels)
  if not (labels == 1).any():
    metrics['recall'] = float('nan')
  if not (labels == 0).any():
    metrics['specificity'] = float('nan')
  metrics['sensitivity'] = metrics['recall']
  metrics['num_labelled'] = int(len(labels))
  return metrics


MAP_FOLDERS = {'maps': '.npy', 'regions': '.png', 'overlays': '.png'}


def _write_map_outputs(workdir: str, item: Item, image: np.ndarray, errors: np.ndarray,
                       region: np.ndarray, info: preprocess_lib.CropInfo) -> Optional[str]:
  """maps/, regions/ and overlays/ of one input (re-reads the scan for the overlay).

  Returns None, or why they could not be written (e.g. a name too long for the file system).
  """
  map_orig, region_orig = original_grid_outputs(image, errors, region, info)
  rel = inputs_lib.safe_relpath(item.path, backslash=item.in_zip)
  paths = {k: os.path.join(workdir, k, rel + ext) for k, ext in MAP_FOLDERS.items()}
  try:
    for p in paths.values():
      os.makedirs(os.path.dirname(p), exist_ok=True)
    np.save(paths['maps'], map_orig)
    # Fast zlib level: PNG encoding is otherwise most of a BrainCVAE prediction's time.
    Image.fromarray(region_orig.astype(np.uint8) * 255).save(paths['regions'], compress_level=1)
    scan = image_io.to_gray_float(item.load())
    Image.fromarray(overlay(scan, map_orig, region_orig)).save(paths['overlays'],
                                                               compress_level=1)
  except (OSError, image_io.UnreadableImage) as e:
    return getattr(e, 'strerror', None) or str(e)
  return None


def _predict_workdirs_among(files) -> List[str]:
  """Folders (real paths, ending in a separator) of the input files that hold a predict
  run's config.json."""
  found = []
  for f in files:
    if f.in_zip or os.path.basename(f.source) != 'config.json':
      continue
    try:
      task = reruns.read_config_json(os.path.dirname(f.source)).get('task')
    except (OSError, ValueError, AttributeError):  # not a brainjax config
      continue
    if task == 'predict':
      found.append(os.path.dirname(os.path.realpath(f.source)) + os.sep)
  return found


def _check_input_outside_map_folders(workdir: str, input_path: str):
  """The map folders are replaced by each prediction: they must not hold its input."""
  real_input = os.path.realpath(input_path)
  for name in MAP_FOLDERS:
    folder = os.path.realpath(os.path.join(workdir, name))
    if real_input == folder or real_input.startswith(folder + os.sep):
      raise ValueError(f'input {input_path!r} lies in an output folder of --workdir {workdir!r}, '
                       'which a prediction replaces: choose another --workdir')


def _clear_outputs(workdir: str):
  """Removes an earlier prediction's metrics.json, predictions.csv, maps/, regions/ and
  overlays/ from this workdir."""
  reporting.remove_metrics_json(workdir)
  for path in (os.path.join(workdir, name) for name in ('predictions.csv', *MAP_FOLDERS)):
    if os.path.islink(path) or os.path.isfile(path):  # a link: dropped, never what it points to
      os.unlink(path)
    elif os.path.isdir(path):
      shutil.rmtree(path)


def _drop_near_duplicates(config, run: Run, prepared: Prepared,
                          reader: inputs_lib.Reader) -> int:
  """Marks inputs that are near-duplicates of config.dedup_against's images as skipped."""
  if not config.dedup_against or not len(prepared.ok):
    return 0
  reference = prepare(file_items(inputs_lib.list_inputs(config.dedup_against), reader),
                      run.image_size, run.margin, config.num_threads)
  if not len(reference.ok):
    raise ValueError(f'dedup_against={config.dedup_against!r} holds no readable images')
  duplicate = np.asarray(dedup.near_duplicates_of(
      prepared.images, reference.images, config.dedup_threshold), bool)
  for i in prepared.ok[duplicate]:
    prepared.status[i] = 'skipped: near-duplicate of a dedup_against image'
  keep = ~duplicate
  prepared.images = prepared.images[keep]
  prepared.infos = [info for info, k in zip(prepared.infos, keep) if k]
  prepared.ok = prepared.ok[keep]
  logging.info('%d of %d inputs are near-duplicates (correlation > %g) of the %d images in %s; '
               'skipped.', int(duplicate.sum()), len(duplicate), config.dedup_threshold,
               len(reference.ok), config.dedup_against)
  return int(duplicate.sum())


def _smoke_inputs(config, workdir):
  """Smoke mode: a tiny trained run and phantom slices when none are given."""
  model_dir, input_path = config.model_dir, config.input
  if not model_dir:
    if config.smoke_task not in MODEL_TASKS:
      raise ValueError(f'smoke_task={config.smoke_task!r}; expected one of {MODEL_TASKS}')
    model_dir = os.path.join(workdir, f'smoke_model_{config.smoke_task}')  # one per task
    if not os.path.isfile(os.path.join(model_dir, 'metrics.json')):
      sub = importlib.import_module(f'configs.{config.smoke_task}').get_config('real,smoke')
      sub.cache_dir = datasets.cache_dir(config)
      sub.num_devices = config.num_devices
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


def train_and_evaluate(config, workdir):
  """Predicts config.input with the run in config.model_dir; writes into workdir."""
  start = time.perf_counter()
  model_dir, input_path = config.model_dir, config.input
  # (before smoke mode replaces its inputs: a refused run changes nothing)
  if config.batch_size < 1:
    raise ValueError(f'batch_size={config.batch_size}: it must be at least 1')
  if config.dedup_against and not os.path.exists(config.dedup_against):
    raise FileNotFoundError(f'dedup_against={config.dedup_against!r} does not exist')
  if config.get('smoke'):
    model_dir, input_path = _smoke_inputs(config, workdir)
  if not model_dir:
    raise ValueError('set --config.model_dir to the workdir of a trained cnn_cls or cvae_cls run')
  files = inputs_lib.list_inputs(input_path)  # before loading: a wrong path fails fast
  if not files:
    logging.warning('%s holds no files: nothing to predict.', input_path)
  # Predict workdirs in the input (this one, or an earlier run's): outputs, not scans. A
  # workdir holding the input (smoke mode writes it there) is not in it.
  outputs = _predict_workdirs_among(files)
  own = os.path.realpath(workdir) + os.sep
  if own.startswith(os.path.realpath(input_path) + os.sep):
    outputs.append(own)
  kept = [f for f in files if f.in_zip or not os.path.realpath(f.source).startswith(tuple(outputs))]
  if len(kept) < len(files):
    logging.info('Not reading %d files of predict workdirs in the input.', len(files) - len(kept))
  files = kept
  _check_input_outside_map_folders(workdir, input_path)
  # An earlier prediction's outputs: none until this one's are written (config.json, which
  # launch.py has rewritten, describes this one; a refused or killed one leaves none).
  _clear_outputs(workdir)
  run = load_run(model_dir)
  rules = run_rules(run, config.rules)
  logging.info('Predicting %d files of %s with the %s run %s%s.', len(files), input_path,
               run.task, model_dir, f' (rules: {", ".join(rules)})' if rules else '')

  seconds = {'load': time.perf_counter() - start}
  with inputs_lib.Reader() as reader:
    tick = time.perf_counter()
    prepared = prepare(file_items(files, reader), run.image_size, run.margin, config.num_threads)
    num_unreadable = len(files) - len(prepared.ok)
    num_duplicates = _drop_near_duplicates(config, run, prepared, reader)
    seconds['preprocess'], tick = time.perf_counter() - tick, time.perf_counter()
    preds = predict_images(run, prepared.images, rules, config.batch_size)
    seconds['model'], tick = time.perf_counter() - tick, time.perf_counter()
    num_without_maps = 0
    if rules and config.write_maps:
      with concurrent.futures.ThreadPoolExecutor(_threads(config.num_threads)) as pool:
        failures = list(pool.map(lambda j: _write_map_outputs(
            workdir, prepared.items[prepared.ok[j]], prepared.images[j, ..., 0],
            preds.errors[j], preds.region[j], prepared.infos[j]), range(len(prepared.ok))))
      for i, failure in zip(prepared.ok, failures):
        if failure:
          prepared.status[i] = f'ok; maps not written: {failure}'
          num_without_maps += 1
      if num_without_maps:
        logging.warning('%d maps not written; see the status column of predictions.csv.',
                        num_without_maps)
      seconds['maps'] = time.perf_counter() - tick

  fields, rows = _csv_rows(prepared, preds, rules)
  write_predictions_csv(os.path.join(workdir, 'predictions.csv'), fields, rows)
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

  labels = np.array([prepared.items[i].label for i in prepared.ok], object)
  known = np.array([l is not None for l in labels], bool)
  if known.any():
    y = labels[known].astype(np.int32)
    ranked = preds.score if preds.log_odds is None else preds.log_odds
    metrics.update(labelled_metrics(y, preds.label[known], ranked[known]))
    for r in rules[1:]:
      extra = labelled_metrics(y, preds.rule_labels[r][known], preds.rule_scores[r][known])
      metrics.update({f'{r}_{k}': v for k, v in extra.items()})
    logging.info('Labelled inputs: %d; accuracy %.4f, balanced accuracy %.4f, ROC AUC %s.',
                 int(known.sum()), metrics['accuracy'], metrics['balanced_accuracy'],
                 metrics['auroc'])
  reporting.write_metrics_json(workdir, metrics)
  logging.info('Predicted %d of %d files in %.1f s (%s); wrote %s.', len(prepared.ok),
               len(files), seconds['total'],
               ', '.join(f'{k} {v:.1f} s' for k, v in seconds.items() if k != 'total'),
               os.path.join(workdir, 'predictions.csv'))
  return metrics
