"""Tumour localisation: overlap of a predicted anomalous-pixel map with the true mask.

Only measurable where true masks exist (phantom data), which the study lacked.
An empty prediction of an empty mask counts as perfect (1.0).
"""
from typing import Dict

import numpy as np


def dice_iou(predicted: np.ndarray, masks: np.ndarray):
  """Per-image Dice and IoU, float64 (N,) each.

  predicted: bool (N, H*W) or (N, H, W); masks: (N, H, W) or (N, H*W), nonzero = tumour.
  """
  predicted = np.asarray(predicted).reshape(len(predicted), -1).astype(bool)
  masks = np.asarray(masks)
  if np.issubdtype(masks.dtype, np.inexact) and not np.isfinite(masks).all():
    raise ValueError('masks contain NaN or inf (NaN != 0 would count as tumour)')
  masks = masks.reshape(len(masks), -1) != 0
  if predicted.shape != masks.shape:
    raise ValueError(f'predicted {predicted.shape} and masks {masks.shape} differ')
  inter = np.sum(predicted & masks, axis=1).astype(np.float64)
  size_sum = predicted.sum(axis=1) + masks.sum(axis=1)
  union = np.sum(predicted | masks, axis=1)
  dice = np.where(size_sum > 0, 2 * inter / np.maximum(size_sum, 1), 1.0)
  iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
  return dice, iou


def mean_localisation(predicted: np.ndarray, masks: np.ndarray,
                      labels: np.ndarray) -> Dict[str, float]:
  """Mean Dice / IoU over the tumour images (labels == 1); NaN if there are none."""
  dice, iou = dice_iou(predicted, masks)
  tumour = np.asarray(labels) == 1
  if not tumour.any():
    return dict(dice=float('nan'), iou=float('nan'))
  return dict(dice=float(dice[tumour].mean()), iou=float(iou[tumour].mean()))
