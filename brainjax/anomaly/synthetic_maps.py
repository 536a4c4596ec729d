"""Error maps that look like a CVAE's, for benchmarks and tests (no model needed)."""
import numpy as np
from scipy import ndimage


def synthetic_error_maps(num_images: int, size: int = 128, seed: int = 0):
  """Error maps that look like a CVAE's: (errors float32 (N, size*size), labels, masks).

  Smoothed noise inside an elliptic 'brain', a bright rim at its edge, faint noise
  outside; tumour maps add a noisy Gaussian blob (mask: the blob's core). Each
  map is min-max normalised like the real ones.
  """
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  labels = (rng.random(num_images) < 0.5).astype(np.int32)  # about half tumour maps
  errors = np.empty((num_images, size * size), np.float32)
  masks = np.zeros((num_images, size, size), np.uint8)
  noise = ndimage.gaussian_filter(
      rng.standard_normal((num_images, size, size)).astype(np.float32), (0, 1.5, 1.5))
  for i in range(num_images):
    cy, cx = size / 2 + rng.normal(0, size / 32, 2)
    ry, rx = size * rng.uniform(0.33, 0.45, 2)
    radius = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    err = np.where(radius <= 1, 0.15, 0.02) * np.abs(noise[i])
    err = err + 0.25 * rng.random() * (np.abs(radius - 1) < 0.03)
    if labels[i]:
      r = size * rng.uniform(0.04, 0.12)
      ty, tx = cy + rng.uniform(-0.5, 0.5) * ry, cx + rng.uniform(-0.5, 0.5) * rx
      d2 = (yy - ty) ** 2 + (xx - tx) ** 2
      err = err + rng.uniform(0.3, 0.8) * np.exp(-d2 / (2 * r * r)) * (1 + 0.3 * noise[i])
      masks[i] = d2 <= (1.2 * r) ** 2
    err = np.maximum(err, 0)
    errors[i] = ((err - err.min()) / (err.max() - err.min())).reshape(-1)
  return errors, labels, masks
