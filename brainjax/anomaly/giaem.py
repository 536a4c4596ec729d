"""GIAEM, global image absolute error magnitude (study rule 1).

A pixel is anomalous if its normalised error >= anomaly_threshold; an image is a
tumour if its anomalous fraction >= tumor_index. Score: the anomalous fraction.
"""
from typing import Optional, Sequence

import numpy as np

from brainjax.anomaly import pixel_features


def giaem(errors: np.ndarray, anomaly_threshold: float,
          tumor_index: float) -> pixel_features.RuleOutput:
  """Applies the rule to (N, H*W) normalised errors."""
  errors = pixel_features.check_errors(errors)
  region = errors >= np.float32(anomaly_threshold)
  score = region.sum(axis=1) / errors.shape[1]
  return pixel_features.RuleOutput(
      score=score, prediction=(score >= tumor_index).astype(np.int32), region=region)


def giaem_grid_scores(errors: np.ndarray, anomaly_thresholds: Sequence[float],
                      codes: Optional[np.ndarray] = None) -> np.ndarray:
  """float64 (N, T): the score at every threshold, from one pass over the errors.

  `codes` (threshold_codes of the same errors and grid) may be passed to share them.
  """
  errors = pixel_features.check_errors(errors)
  thresholds = pixel_features.check_grid(anomaly_thresholds, 'anomaly_thresholds')
  if codes is None:
    codes = pixel_features.threshold_codes(errors, thresholds)
  return pixel_features.counts_above(codes, thresholds.size) / errors.shape[1]
