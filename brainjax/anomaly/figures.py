"""Figures like the study's 4 and 5: original, reconstruction, error map and the
region a rule calls anomalous, one row per slice, saved as one PNG."""
from typing import Optional, Sequence

from matplotlib.figure import Figure
import numpy as np

from brainjax.train import reporting


def pick_examples(labels: np.ndarray, per_class: int = 3, seed: int = 0) -> np.ndarray:
  """Indices of up to `per_class` tumour then `per_class` healthy slices."""
  rng = np.random.default_rng(seed)
  labels = np.asarray(labels)
  picked = []
  for label in (1, 0):
    where = np.flatnonzero(labels == label)
    picked.extend(np.sort(rng.choice(where, size=min(per_class, where.size), replace=False)))
  return np.asarray(picked, np.int64)


def save_anomaly_figure(path: str, images: np.ndarray, reconstructions: np.ndarray,
                        errors: np.ndarray, regions: np.ndarray, labels: np.ndarray,
                        predictions: Optional[np.ndarray] = None,
                        names: Optional[Sequence[str]] = None, title: str = '') -> str:
  """Writes the figure for K slices and returns `path`.

  images, reconstructions: (K, H, W[, 1]) in [0, 1]; errors: (K, H*W) or
  (K, H, W) normalised errors (the maps the rule read); regions: bool, same
  layout (the rule's anomalous pixels, drawn in red over the slice); labels /
  predictions: (K,) 0 or 1.
  """
  images = np.asarray(images)
  k = len(images)
  h, w = images.shape[1:3]
  arrays = [np.asarray(a).reshape(k, h, w) for a in (images, reconstructions, errors)]
  regions = np.asarray(regions).reshape(k, h, w).astype(bool)
  if k == 0:
    raise ValueError('save_anomaly_figure needs at least one slice')
  # Figure without pyplot: no global backend state, Agg canvas for savefig.
  fig = Figure(figsize=(10, 2.6 * k))
  axes = fig.subplots(k, 4, squeeze=False)
  heads = ('original', 'reconstruction', 'error (normalised)', 'anomalous pixels')
  for row in range(k):
    image, recon, error = (a[row] for a in arrays)
    overlay = np.stack([image] * 3, axis=-1)
    overlay[regions[row]] = 0.4 * overlay[regions[row]] + 0.6 * np.array([1.0, 0.0, 0.0])
    panels = (image, recon, error, np.clip(overlay, 0, 1))
    for col, (ax, panel) in enumerate(zip(axes[row], panels)):
      ax.imshow(panel, cmap='magma' if col == 2 else 'gray', vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(heads[col], fontsize=9)
    text = 'tumour' if labels[row] == 1 else 'healthy'
    if predictions is not None:
      text += f'\npred {"tumour" if predictions[row] == 1 else "healthy"}'
    if names is not None:
      text = f'{names[row]}\n{text}'
    axes[row][0].set_ylabel(text, fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return reporting.save_figure(fig, path, dpi=80)
