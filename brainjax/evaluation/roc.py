"""ROC curves of classifiers on the real test set, drawn as one PNG.

scikit-learn's curve (a point per distinct score) and trapezoid area: the area is
`classification.auroc` exactly, a run of tied scores being one diagonal step, the one half
the Mann-Whitney count gives each tied (tumour, healthy) pair.
"""
from typing import NamedTuple, Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics

from brainjax.evaluation import classification
from brainjax.train import reporting


class Curve(NamedTuple):
  """One classifier's curve and its legend name; auc: the area under fpr, tpr."""
  name: str
  fpr: np.ndarray
  tpr: np.ndarray
  auc: float


def roc_curve(labels, scores):
  """(false positive rates, true positive rates), from (0, 0) to (1, 1); a ValueError without
  both classes (scikit-learn would warn and return NaNs)."""
  labels = classification.as_binary('labels', labels)
  scores = np.asarray(scores, np.float64)
  if labels.shape != scores.shape or labels.ndim != 1:
    raise ValueError(f'labels {labels.shape} and scores {scores.shape}: two equal 1-D arrays')
  positives, negatives = int(labels.sum()), int((~labels).sum())
  if not positives or not negatives:
    raise ValueError(f'a ROC curve needs both classes: {positives} tumour, {negatives} healthy')
  fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
  return fpr, tpr


def curve_area(fpr, tpr) -> float:
  """The trapezoid area under a curve of `roc_curve`."""
  return float(metrics.auc(fpr, tpr))


def make_curve(name, labels, scores) -> Curve:
  fpr, tpr = roc_curve(labels, scores)
  return Curve(name, fpr, tpr, curve_area(fpr, tpr))


def save_roc_figure(path: str, curves: Sequence[Curve], title: str = '') -> str:
  """Writes the curves, each labelled with its AUC, and the chance diagonal; returns `path`."""
  if not curves:
    raise ValueError('save_roc_figure needs at least one curve')
  # Figure without pyplot: no global backend state, Agg canvas for savefig.
  fig = Figure(figsize=(6, 5.5))
  ax = fig.subplots()
  ax.plot([0, 1], [0, 1], color='0.7', linestyle=':', linewidth=1, label='chance (AUC 0.500)')
  for curve in curves:
    ax.plot(curve.fpr, curve.tpr, linewidth=1.5,
            label=f'{curve.name} (AUC {curve.auc:.3f})')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel('false positive rate (healthy called tumour)')
  ax.set_ylabel('true positive rate (tumour found)')
  if title:
    ax.set_title(title, fontsize=10)
  ax.legend(loc='lower right', fontsize=7)
  fig.tight_layout()
  return reporting.save_figure(fig, path, dpi=100)
