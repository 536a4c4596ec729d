"""A trained cnn_cls or cvae_cls run, rebuilt from its workdir: the model with its best
checkpoint, its preprocessing settings and, for a BrainCVAE, the anomaly rules with the
hyperparameters it selected on validation (metrics.json: `selected_rule`, `<rule>_<name>`;
global KMeans also the centroids it fitted, global_kmeans_centroids.npy). Used by predict and
by the study's generator audit; the user retypes nothing.
"""
import dataclasses
import importlib
import os
from typing import Any, Dict, List

from absl import logging
import jax
import ml_collections
import numpy as np

from brainjax.anomaly import evaluate as anomaly_evaluate
from brainjax.train import checkpoints
from brainjax.train import reporting
from brainjax.train import reruns

MODEL_TASKS = ('cnn_cls', 'cvae_cls')
RULES = anomaly_evaluate.RULES


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
  if not os.path.isdir(run_dir):
    raise FileNotFoundError(f'{run_dir!r} does not exist: give the --workdir of a brainjax run')
  if not os.path.isfile(os.path.join(run_dir, 'config.json')):
    raise FileNotFoundError(f'{run_dir!r} has no config.json: not the workdir of a brainjax run')
  try:
    return reruns.load_config(run_dir)
  except (ValueError, TypeError, AttributeError) as e:  # (JSONDecodeError is a ValueError)
    raise ValueError(f'{run_dir}/config.json is not a brainjax run config: {e}') from None


def task_module(task: str):
  # Imported on demand, as launch.py does: a BrainCNN run needs none of the CVAE stack.
  return importlib.import_module(f'brainjax.tasks.{task}')


def load_run(run_dir: str) -> Run:
  """Rebuilds the model of a cnn_cls / cvae_cls run and restores its best checkpoint."""
  config = load_run_config(run_dir)
  if config.get('task') not in MODEL_TASKS:
    raise ValueError(f'{run_dir!r} is a {config.get("task")!r} run; predict needs a '
                     f'{" or ".join(MODEL_TASKS)} run')
  task = task_module(config.task)
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
    metrics = _read_metrics(run_dir)
  elif config.task == 'cvae_cls':  # its rules' settings are there
    raise ValueError(f'{run_dir!r} has no metrics.json: the run has not finished (or a rerun of '
                     'it was stopped); run its command again to the end')
  else:
    logging.warning('%s has no metrics.json: the run has not finished (or a rerun of it was '
                    'stopped); predicting with its best checkpoint so far.', run_dir)
  return Run(run_dir, config.task, config, model, state.variables, metrics)


def _read_metrics(run_dir: str) -> Dict[str, Any]:
  """The run's metrics.json, or a ValueError naming it (damaged, or not a run's)."""
  again = 'run that run\'s command again, which evaluates its best checkpoint and writes it anew'
  try:
    metrics = reporting.read_metrics_json(run_dir)
  except (OSError, ValueError) as e:  # (JSONDecodeError, UnicodeDecodeError: ValueErrors)
    raise ValueError(f'{run_dir}/metrics.json cannot be read ({e}): {again}') from None
  if not isinstance(metrics, dict):
    raise ValueError(f'{run_dir}/metrics.json is not a run\'s metrics (no JSON object): {again}')
  return metrics


# Global KMeans also needs the two centroids its cvae_cls run fitted on validation.
GLOBAL_CENTROIDS_FILE = anomaly_evaluate.FITTED_ARRAYS[0] + '.npy'


def rule_params(metrics: Dict[str, Any], rule: str) -> Dict[str, float]:
  """The hyperparameters a cvae_cls run selected for `rule` on validation."""
  names = anomaly_evaluate.RULE_PARAMS[rule]
  missing = [f'{rule}_{n}' for n in names if metrics.get(f'{rule}_{n}') is None]
  if missing:
    raise ValueError(f'the run\'s metrics.json lacks {", ".join(missing)}: was the {rule} '
                     'rule evaluated in that run?')
  return {n: float(metrics[f'{rule}_{n}']) for n in names}


def evaluated_rules(metrics: Dict[str, Any]) -> List[str]:
  """The rules whose hyperparameters the run's metrics.json holds, in RULES order."""
  return [r for r in RULES
          if all(metrics.get(f'{r}_{n}') is not None for n in anomaly_evaluate.RULE_PARAMS[r])]


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


def check_rules(task: str, spec: str) -> None:
  """A ValueError for config.rules no run of `task` can take, found before it loads: rules on a
  BrainCNN run, or names that are no rules (which ones the run evaluated: once it loads)."""
  spec = (spec or 'selected').strip()
  if task == 'cnn_cls' and spec != 'selected':
    raise ValueError(f'rules={spec!r}: a BrainCNN run has no anomaly rules (a cvae_cls run has)')
  if spec not in ('selected', 'all'):
    rules_to_use(spec, {})


def run_rules(run: Run, spec: str) -> List[str]:
  """rules_to_use for a run: [] for a BrainCNN; the run's own selection metric."""
  check_rules(run.task, spec)
  if run.task != 'cvae_cls':
    return []
  metric = run.config.get('anomaly', {}).get('selection_metric', 'f1')
  rules = rules_to_use(spec, run.metrics, metric)
  for rule in rules:  # fail before any input is read
    rule_params(run.metrics, rule)
  if 'global_kmeans' in rules:
    global_centroids(run)
  return rules


def reconstruction_errors(run: Run, images: np.ndarray) -> np.ndarray:
  """float32 (N, S*S): the normalised errors cvae_cls computes, in its jitted batches (with its
  latent samples, if it averaged some: those it drew for the same images)."""
  cvae_cls = task_module('cvae_cls')
  return cvae_cls.error_maps(run.model, run.variables, images, run.config.get('anomaly', {}),
                             cvae_cls.latent_samples_key(run.config.get('seed', 0)))


def global_centroids(run: Run) -> np.ndarray:
  """The (2, H*W) centroids (tumour first) the run's global KMeans rule fitted on validation."""
  path = os.path.join(run.directory, GLOBAL_CENTROIDS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is missing: the global_kmeans rule needs the centroids its '
                            'cvae_cls run saves; choose other rules (--config.rules)')
  try:
    centroids = np.load(path)
  except (OSError, ValueError, EOFError):  # (ValueError: not an .npy, or pickled objects)
    centroids = None
  size = run.image_size ** 2
  if not (isinstance(centroids, np.ndarray) and centroids.shape == (2, size)
          and np.issubdtype(centroids.dtype, np.floating) and np.isfinite(centroids).all()):
    raise ValueError(f'{path} is not the (2, {size}) centroids its run saved: run that run\'s '
                     'command again, which reruns the rules and saves them anew, or choose other '
                     'rules (--config.rules)')
  return centroids


def apply_rule(run: Run, rule: str, errors: np.ndarray, image_shape):
  """The rule's RuleOutput (score, prediction, region) for (N, H*W) normalised errors."""
  max_iter = int(run.config.get('anomaly', {}).get('kmeans_max_iter', 100))
  centroids = global_centroids(run) if rule == 'global_kmeans' else None
  return anomaly_evaluate.apply_rule(rule, errors, rule_params(run.metrics, rule), image_shape,
                                     max_iter, centroids)
