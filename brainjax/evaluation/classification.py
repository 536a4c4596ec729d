"""Binary classification metrics (tumour = POSITIVE = 1), pure NumPy.

Two entry points share one set of formulas so that a vectorised grid search and a
one-off evaluation can never disagree:

- `metrics_from_confusion(tn, fp, fn, tp)`: every metric from confusion counts; the
  counts may be arrays of any (common) shape, e.g. one count per grid point.
- `classification_metrics(labels, predictions, scores=None)`: a flat dict of floats
  for one set of predictions, plus ROC AUC of a continuous score.

Zero denominators give 0.0, like scikit-learn's `zero_division=0`.

The study's "weighted" numbers. Its Table 1 reports, for VAE rows, F1 below both
precision and recall (e.g. 56.76 vs 60.95 / 67.11), impossible for the positive-class
F1 of those P and R; the numbers are the *macro* averages over the two classes, each
class weighted 0.5 (scikit-learn `average='macro'`). The "Global KMeans, Mixed" row
confirms it exactly: a classifier that predicts (almost) only the majority class at
accuracy 78.8% gives macro precision ~39.9, macro recall ~49.3, macro F1 ~44.1, the
reported 39.88 / 49.27 / 44.08. Hence, named as scikit-learn names them (its "weighted"
weighs each class by its size):
  macro_precision = (precision_tumour + precision_healthy) / 2
  macro_recall    = (recall_tumour + recall_healthy) / 2
  macro_f1        = (f1_tumour + f1_healthy) / 2
(the per-class F1s are averaged, not the F1 of the averaged P and R). Like
scikit-learn's, the averages run over the classes that occur in the labels or the
predictions: a set of healthy slices all called healthy scores 1, not 0.5.
"""
from typing import Dict, Optional

import numpy as np

METRIC_NAMES = (
    'accuracy', 'precision', 'recall', 'f1', 'specificity', 'balanced_accuracy',
    'macro_precision', 'macro_recall', 'macro_f1')


def _ratio(num, den):
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  num, den = np.broadcast_arrays(num, den)
  return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)


def metrics_from_confusion(tn, fp, fn, tp) -> Dict[str, np.ndarray]:
  """All METRIC_NAMES as float64 arrays broadcast from the four counts.

  balanced_accuracy follows scikit-learn: the mean recall over the classes that
  occur in the labels (one class only -> that class's recall).
  """
  tn, fp, fn, tp = (np.asarray(c, np.float64) for c in (tn, fp, fn, tp))
  pos, neg = tp + fn, tn + fp
  precision, recall = _ratio(tp, tp + fp), _ratio(tp, pos)
  npv, specificity = _ratio(tn, tn + fn), _ratio(tn, neg)
  f1_pos = _ratio(2 * tp, 2 * tp + fp + fn)
  f1_neg = _ratio(2 * tn, 2 * tn + fn + fp)
  classes_present = (pos > 0).astype(np.float64) + (neg > 0)
  balanced = _ratio(recall * (pos > 0) + specificity * (neg > 0), classes_present)
  # Macro averages run over the classes in the labels or the predictions, as scikit-learn's.
  tumour_seen, healthy_seen = (tp + fn + fp) > 0, (tn + fp + fn) > 0
  seen = tumour_seen.astype(np.float64) + healthy_seen
  macro = lambda tumour, healthy: _ratio(tumour * tumour_seen + healthy * healthy_seen, seen)
  return {
      'accuracy': _ratio(tp + tn, pos + neg),
      'precision': precision,
      'recall': recall,
      'f1': f1_pos,
      'specificity': specificity,
      'balanced_accuracy': balanced,
      'macro_precision': macro(precision, npv),
      'macro_recall': macro(recall, specificity),
      'macro_f1': macro(f1_pos, f1_neg),
  }


def auroc(labels, scores) -> float:
  """Area under the ROC curve (ties count one half); NaN when one class is absent."""
  labels = as_binary('labels', labels)
  scores = np.asarray(scores, np.float64)
  if scores.shape != labels.shape:
    raise ValueError(f'scores {scores.shape} and labels {labels.shape} differ')
  if not np.isfinite(scores).all():
    raise ValueError('scores contain NaN or inf')
  num_pos = int(labels.sum())
  num_neg = labels.size - num_pos
  if num_pos == 0 or num_neg == 0:
    return float('nan')
  # Mann-Whitney U with average ranks for tied scores.
  order = np.argsort(scores, kind='stable')
  sorted_scores = scores[order]
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], scores.size]
  average_rank = (starts + ends + 1) / 2.0  # 1-based ranks, averaged over ties
  ranks = np.empty(scores.size)
  ranks[order] = np.repeat(average_rank, ends - starts)
  u = ranks[labels].sum() - num_pos * (num_pos + 1) / 2.0
  return float(u / (num_pos * num_neg))


def as_binary(name, values):
  """bool (N,) of 1-D 0 (healthy) / 1 (tumour) values, or a one-line ValueError naming them."""
  values = np.asarray(values)
  if values.ndim != 1:
    raise ValueError(f'{name} must be 1-D, got shape {values.shape}')
  if values.size and not np.isin(values, (0, 1)).all():
    raise ValueError(f'{name} must hold only 0 (healthy) and 1 (tumour), '
                     f'got {np.unique(values)[:5]}')
  return values.astype(bool)


def confusion_counts(labels, predictions):
  """(tn, fp, fn, tp) as Python ints."""
  labels = as_binary('labels', labels)
  predictions = as_binary('predictions', predictions)
  if labels.shape != predictions.shape:
    raise ValueError(f'labels {labels.shape} and predictions {predictions.shape} differ')
  tp = int(np.sum(labels & predictions))
  fp = int(np.sum(~labels & predictions))
  fn = int(np.sum(labels & ~predictions))
  tn = int(labels.size - tp - fp - fn)
  return tn, fp, fn, tp


def classification_metrics(labels, predictions,
                           scores: Optional[np.ndarray] = None) -> Dict[str, float]:
  """Flat dict: METRIC_NAMES (floats), tn/fp/fn/tp (ints), auroc if scores given."""
  tn, fp, fn, tp = confusion_counts(labels, predictions)
  if tn + fp + fn + tp == 0:
    raise ValueError('classification_metrics needs at least one example')
  out = {k: float(v) for k, v in metrics_from_confusion(tn, fp, fn, tp).items()}
  out.update(tn=tn, fp=fp, fn=fn, tp=tp)
  if scores is not None:
    out['auroc'] = auroc(labels, scores)
  return out
