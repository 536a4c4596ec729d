"""Per-pixel reconstruction error |x - x_hat|, min-max normalised per image.

The study's anomaly score map: a model trained on healthy slices reconstructs
tumours badly, so the normalised absolute error is high where a tumour is.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from brainjax.train import compile_options


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


@compile_options.jit(static_argnames='reconstruct_fn')
def _batch_errors(reconstruct_fn, variables, x):
  """Normalised errors of one batch; the model variables are an argument, not
  constants baked into the compiled function."""
  x = x.astype(jnp.float32)
  return jax.vmap(normalised_abs_error)(x, reconstruct_fn(variables, x))


def reconstruction_error(reconstruct_fn: Callable, images: np.ndarray, *, variables: Any,
                         batch_size: int = 256) -> np.ndarray:
  """Normalised per-pixel error of every image, float32 (N, H*W).

  Args:
    reconstruct_fn: a JAX function (traced under jit), batched NHWC in and out:
      `reconstruct_fn(variables, images)`.
      A static argument of the jitted batches: the compilation is reused for an equal
      one (the same function, or e.g. `cvae_cls.Reconstruction` of an equal model; a
      functools.partial is equal only to itself).
    images: float (N, H, W, 1).
    batch_size: the most images per jitted call.
    variables: model parameters (any pytree) passed to the compiled function as an
      argument; closing over them instead makes XLA constant-fold the decoder at
      compile time (seconds).

  Returns:
    float32 (N, H*W) in [0, 1]; each row min-max normalised (constant -> zeros).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f'images must be (N, H, W, 1), got {images.shape}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  n, h, w, _ = images.shape
  out = np.empty((n, h * w), np.float32)
  if n == 0:
    return out
  # Batches of one shape, the last padded: the smallest power of two that holds every image
  # (at most batch_size), so that sets of similar sizes (a run's validation and test
  # slices) share one compilation, and a few images do not pay for batch_size.
  batch = min(batch_size, 1 << (n - 1).bit_length())
  for start in range(0, n, batch):
    chunk = images[start:start + batch]
    valid = len(chunk)
    if valid < batch:  # pad so the shape (and the compilation) never changes
      chunk = np.concatenate([chunk, np.zeros((batch - valid,) + chunk.shape[1:], chunk.dtype)])
    errors = _batch_errors(reconstruct_fn, variables, chunk)
    out[start:start + valid] = np.asarray(errors)[:valid]
  return out
