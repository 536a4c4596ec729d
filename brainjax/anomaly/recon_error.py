"""Per-pixel reconstruction error |x - x_hat|, min-max normalised per image.

The study's anomaly score map: a model trained on healthy slices reconstructs
tumours badly, so the normalised absolute error is high where a tumour is.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np


def minmax_normalise(err: jnp.ndarray) -> jnp.ndarray:
  """One image's error map (H, W, 1) as (H*W,) rescaled to [0, 1].

  A constant map (e.g. a perfect reconstruction) shows no anomaly: zeros.
  """
  err = err.reshape(-1)
  lo, hi = jnp.min(err), jnp.max(err)
  span = hi - lo
  return jnp.where(span > 0, (err - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def normalised_abs_error(image: jnp.ndarray, recon: jnp.ndarray) -> jnp.ndarray:
  """|image - recon| of one (H, W, 1) image, min-max normalised, as (H*W,)."""
  return minmax_normalise(jnp.abs(image - recon))


def reconstruction_error(reconstruct_fn: Callable, images: np.ndarray, *,
                         batch_size: int = 256, num_samples: int = 1,
                         rng: Optional[jax.Array] = None) -> np.ndarray:
  """Normalised per-pixel error of every image, float32 (N, H*W).

  Args:
    reconstruct_fn: deterministic `recon = reconstruct_fn(images)` when `rng` is
      None; stochastic `recon = reconstruct_fn(images, key)` (e.g. one latent
      sample per call) when `rng` is given. Batched, NHWC in and out; traced
      under jit, so it must be a JAX function.
    images: float (N, H, W, 1).
    batch_size: images per jitted call; the last batch is padded to the same
      shape, so the whole run compiles once.
    num_samples: stochastic mode only: the absolute error is averaged over this
      many reconstructions (keys split from `rng`) before normalising.
    rng: a PRNG key; selects the stochastic mode.

  Returns:
    float32 (N, H*W) in [0, 1]; each row min-max normalised (constant -> zeros).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f'images must be (N, H, W, 1), got {images.shape}')
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}')
  if rng is None and num_samples != 1:
    raise ValueError('num_samples > 1 needs rng (and reconstruct_fn(images, key))')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  n, h, w, _ = images.shape
  out = np.empty((n, h * w), np.float32)
  if n == 0:
    return out
  batch = min(batch_size, n)

  @jax.jit
  def batch_errors(x, key):
    x = x.astype(jnp.float32)
    if key is None:
      return jax.vmap(normalised_abs_error)(x, reconstruct_fn(x))

    def add_sample(total, sample_key):
      return total + jnp.abs(x - reconstruct_fn(x, sample_key)), None
    total, _ = jax.lax.scan(add_sample, jnp.zeros_like(x), jax.random.split(key, num_samples))
    return jax.vmap(minmax_normalise)(total / num_samples)

  keys = (None if rng is None else jax.random.split(rng, -(-n // batch)))
  for step, start in enumerate(range(0, n, batch)):
    chunk = images[start:start + batch]
    valid = len(chunk)
    if valid < batch:  # pad so the shape (and the compilation) never changes
      chunk = np.concatenate([chunk, np.zeros((batch - valid,) + chunk.shape[1:], chunk.dtype)])
    key = None if keys is None else keys[step]
    out[start:start + valid] = np.asarray(batch_errors(chunk, key))[:valid]
  return out
