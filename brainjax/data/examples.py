"""The in-memory form every data source returns and every task consumes."""
import dataclasses
from typing import Optional

import numpy as np

NEGATIVE, POSITIVE = 0, 1  # healthy ('no/'), tumour ('yes/')


@dataclasses.dataclass(frozen=True)
class Examples:
  """Preprocessed slices and what is known about them; all arrays share axis 0.

  images: float32 (N, H, W, 1) in [0, 1].
  labels: int32 (N,), NEGATIVE or POSITIVE.
  ids: (N,) str, a stable name per slice (path relative to the source root).
  masks: optional uint8 (N, H, W) true tumour masks (phantom only).
  """
  images: np.ndarray
  labels: np.ndarray
  ids: np.ndarray
  masks: Optional[np.ndarray] = None

  def __post_init__(self):
    n = len(self.images)
    for name in ('labels', 'ids', 'masks'):
      value = getattr(self, name)
      if value is not None and len(value) != n:
        raise ValueError(f'Examples.{name} has {len(value)} rows, images has {n}')

  def __len__(self):
    return len(self.images)

  def take(self, index) -> 'Examples':
    """Rows `index` (an int array or boolean mask) as a new Examples."""
    return Examples(
        images=self.images[index], labels=self.labels[index], ids=self.ids[index],
        masks=None if self.masks is None else self.masks[index])

  def with_label(self, label: int) -> 'Examples':
    return self.take(self.labels == label)


def concatenate(parts) -> Examples:
  """Joins several Examples; masks survive only if every part has them."""
  parts = list(parts)
  masks = [p.masks for p in parts]
  return Examples(
      images=np.concatenate([p.images for p in parts]),
      labels=np.concatenate([p.labels for p in parts]),
      ids=np.concatenate([p.ids for p in parts]),
      masks=None if any(m is None for m in masks) else np.concatenate(masks))
