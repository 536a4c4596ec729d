"""Table 1's classifier that learns nothing: the nearest training slice's label.

Each test slice takes the label of the training slice whose 32x32 thumbnail it correlates with
most (1-nearest-neighbour on z-scored thumbnails, dedup.thumbnail_features). A trained
classifier that scores no better than it has learned nothing a lookup could not do; where it
scores high, the test set holds copies of training slices (the random split of a data set full
of near-duplicates) or the task is easy. Every BrainCNN run on real slices scores it on its own
split (cnn_cls), so its Table 1 rows, the study's included, carry the comparison.
"""
import numpy as np

from brainjax.data import dedup
from brainjax.data.examples import NEGATIVE, POSITIVE
from brainjax.evaluation import classification


def nearest_neighbour_scores(train_images, train_labels, test_images) -> np.ndarray:
  """float64 (N_test,): each test slice's highest thumbnail correlation with a tumour training
  slice minus its highest with a healthy one (>= 0: tumour, as BrainCNN's log-odds)."""
  train_labels = np.asarray(train_labels)
  if not ((train_labels == POSITIVE).any() and (train_labels == NEGATIVE).any()):
    raise ValueError('the nearest-neighbour baseline needs training slices of both classes')
  correlation = dedup.thumbnail_features(test_images) @ dedup.thumbnail_features(train_images).T
  best_tumour = correlation[:, train_labels == POSITIVE].max(axis=1)
  best_healthy = correlation[:, train_labels == NEGATIVE].max(axis=1)
  return (best_tumour - best_healthy).astype(np.float64)


def metrics_of_scores(labels, scores):
  """classification_metrics of nearest_neighbour_scores: tumour where the score is >= 0."""
  return classification.classification_metrics(labels, (scores >= 0).astype(int), scores)


def nearest_neighbour_metrics(train, test):
  """classification_metrics of the baseline trained on `train`, tested on `test` (Examples)."""
  return metrics_of_scores(test.labels,
                           nearest_neighbour_scores(train.images, train.labels, test.images))


# The baseline's keys in a BrainCNN run's metrics.json and test_scores.npz (real training data).
PREFIX = 'nearest_neighbour_'


def prefixed(metrics):
  """The baseline's metrics as a run's metrics.json holds them, each key after PREFIX."""
  return {PREFIX + k: v for k, v in metrics.items()}


def recorded(run_metrics):
  """Whether a run's metrics hold the baseline (a BrainCNN run on real slices)."""
  return f'{PREFIX}accuracy' in run_metrics
