"""Train/val/test splits for the two protocols, random or near-duplicate-grouped.

CNN protocol: stratified 70/20/10. Anomaly protocol: train on 75% of the
healthy slices; val = 10% healthy + 40% tumour; test = 15% healthy + 60%
tumour. In 'grouped' mode each near-duplicate group (dedup.py) goes whole to
one split, so no copy of a training image is evaluated on. Splits are disjoint,
cover every index, and depend only on (labels, groups, seed).
"""
from typing import NamedTuple, Optional, Sequence

from absl import logging
import numpy as np

from brainjax.data import dedup
from brainjax.data.examples import NEGATIVE, POSITIVE

CNN_FRACTIONS = (0.7, 0.2, 0.1)
ANOMALY_FRACTIONS = {NEGATIVE: (0.75, 0.10, 0.15), POSITIVE: (0.0, 0.40, 0.60)}


class Split(NamedTuple):
  """Sorted int64 index arrays into the examples."""
  train: np.ndarray
  val: np.ndarray
  test: np.ndarray


def _cuts(count: int, fractions: Sequence[float]) -> np.ndarray:
  """Boundaries [0, a, b, count] of a partition of `count` items by fractions."""
  bounds = np.round(np.cumsum([0.0, *fractions]) * count).astype(np.int64)
  bounds[-1] = count
  return bounds


def _assign_units(sizes: np.ndarray, fractions: Sequence[float], rng) -> np.ndarray:
  """Split id (0, 1, 2) per unit (an image or a group of images) of one stratum.

  Units are shuffled, then laid end to end; a unit goes to the split in which
  its midpoint falls, so split sizes in images match the fractions to within
  about one unit.
  """
  order = rng.permutation(len(sizes))
  ends = np.cumsum(sizes[order])
  mids = ends - sizes[order] / 2.0
  bounds = _cuts(int(ends[-1]) if len(ends) else 0, fractions)
  which = np.searchsorted(bounds[1:-1], mids, side='right')
  out = np.empty(len(sizes), np.int64)
  out[order] = which
  return out


def _split(labels: np.ndarray, seed: int, groups: Optional[np.ndarray], fractions_of,
           group_label) -> Split:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {labels.shape}')
  n = len(labels)
  if groups is None:
    groups = np.arange(n)
  groups = np.asarray(groups)
  if groups.shape != labels.shape:
    raise ValueError(f'groups shape {groups.shape} does not match labels {labels.shape}')
  _, group_index = np.unique(groups, return_inverse=True)
  group_sizes = np.bincount(group_index)
  num_groups = len(group_sizes)
  positives = np.bincount(group_index, weights=(labels == POSITIVE), minlength=num_groups)
  stratum = group_label(positives, group_sizes)
  rng = np.random.default_rng(seed)
  group_split = np.empty(num_groups, np.int64)
  for label in (NEGATIVE, POSITIVE):
    members = np.flatnonzero(stratum == label)
    group_split[members] = _assign_units(group_sizes[members], fractions_of(label), rng)
  image_split = group_split[group_index]
  return Split(*(np.flatnonzero(image_split == k) for k in range(3)))


def _majority(positives, sizes):
  return np.where(positives * 2 > sizes, POSITIVE, NEGATIVE)


def _any_positive(positives, sizes):
  del sizes
  return np.where(positives > 0, POSITIVE, NEGATIVE)


def cnn_split(labels: np.ndarray, seed: int, groups: Optional[np.ndarray] = None) -> Split:
  """Stratified train/val/test split, 70/20/10.

  With groups, whole groups go to one split, stratified by the group's
  majority label (Br35H groups never mix labels, but others may).
  """
  return _split(labels, seed, groups, lambda label: CNN_FRACTIONS, _majority)


def anomaly_split(labels: np.ndarray, seed: int, groups: Optional[np.ndarray] = None) -> Split:
  """Train = 75% healthy; val = 10% healthy + 40% tumour; test = 15% + 60%.

  With groups, a group holding any tumour slice counts as tumour, so the
  training set stays purely healthy even if a group mixes labels.
  """
  return _split(labels, seed, groups, ANOMALY_FRACTIONS.get, _any_positive)


def make_split(labels: np.ndarray, protocol: str, mode: str, seed: int,
               groups: Optional[np.ndarray] = None, threshold: float = 0.98) -> Split:
  """protocol 'cnn' | 'anomaly'; mode 'random' | 'grouped' (needs `groups`: each image's
  near-duplicate group, found at correlation `threshold`, which the log names)."""
  if protocol not in ('cnn', 'anomaly'):
    raise ValueError(f"split protocol must be 'cnn' or 'anomaly', got {protocol!r}")
  if mode not in ('random', 'grouped'):
    raise ValueError(f"split mode must be 'random' or 'grouped', got {mode!r}")
  labels = np.asarray(labels)
  if mode == 'random':
    groups = None
    logging.info('Random %s split of %d images (each image its own group)', protocol, len(labels))
  else:
    if groups is None:
      raise ValueError("split mode 'grouped' needs the near-duplicate groups")
    summary = dedup.group_summary(groups)
    mixed = _mixed_groups(labels, groups)
    logging.info('Grouped %s split: %d images in %d near-duplicate groups (threshold %.3f; '
                 '%d images share %d groups; largest %d; %d groups mix labels)', protocol,
                 summary['images'], summary['groups'], threshold, summary['grouped_images'],
                 summary['shared_groups'], summary['largest_group'], mixed)
  split_fn = cnn_split if protocol == 'cnn' else anomaly_split
  split = split_fn(labels, seed, groups=groups)
  logging.info('Split sizes: train %d, val %d, test %d', len(split.train), len(split.val),
               len(split.test))
  return split


def _mixed_groups(labels: np.ndarray, groups: np.ndarray) -> int:
  _, index = np.unique(groups, return_inverse=True)
  positives = np.bincount(index, weights=(labels == POSITIVE))
  sizes = np.bincount(index)
  return int(((positives > 0) & (positives < sizes)).sum())
