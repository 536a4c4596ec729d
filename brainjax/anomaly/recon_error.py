"""Per-pixel reconstruction error |x - x_hat|, min-max normalised per image.

The study's anomaly score map: a model trained on healthy slices reconstructs
tumours badly, so the normalised absolute error is high where a tumour is.
"""
from typing import Any, Callable, Optional
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from brainjax.train import compile_options

# Images per jitted call, the last call padded, whatever the number of images: XLA rounds each
# batch shape's program its own way, so a slice's map depended on how many were scored with it
# (predict's maps of a run's test slices had pixels ~1e-7 off, one across a rule's threshold).
IMAGES_PER_CALL = 128


def image_checksums(images: np.ndarray) -> np.ndarray:
  """uint32 (N,): the CRC-32 of each image's float32 pixels, what its latent samples are
  keyed by."""
  return np.array([zlib.crc32(np.ascontiguousarray(image, np.float32).tobytes())
                   for image in images], np.uint32)


def minmax_normalise(err: jnp.ndarray) -> jnp.ndarray:
  """One image's error map (H, W, 1) as (H*W,) rescaled to [0, 1].

  A constant map (e.g. a perfect reconstruction) shows no anomaly: zeros.
  """
  err = err.reshape(-1)
  lo, hi = jnp.min(err), jnp.max(err)
  span = hi - lo
  # (clipped: XLA may compute an error fused into this expression and, separately, into its
  # min and max, rounded differently: -6e-12 or 1.0000001)
  return jnp.clip(jnp.where(span > 0, (err - lo) / jnp.where(span > 0, span, 1.0), 0.0), 0.0, 1.0)


def normalised_abs_error(image: jnp.ndarray, recon: jnp.ndarray) -> jnp.ndarray:
  """|image - recon| of one (H, W, 1) image, min-max normalised, as (H*W,)."""
  return minmax_normalise(jnp.abs(image - recon))


@compile_options.jit(static_argnames=('reconstruct_fn', 'num_samples'))
def _batch_errors(reconstruct_fn, variables, x, keys, num_samples):
  """Normalised errors of one batch; the model variables are an argument, not
  constants baked into the compiled function. With keys (one per image), the absolute
  error averaged over num_samples stochastic reconstructions, then normalised."""
  x = x.astype(jnp.float32)
  if keys is None:
    return jax.vmap(normalised_abs_error)(x, reconstruct_fn(variables, x))

  def add_sample(total, sample):
    sample_keys = jax.vmap(lambda key: jax.random.fold_in(key, sample))(keys)
    return total + jnp.abs(x - reconstruct_fn(variables, x, sample_keys)), None
  total, _ = jax.lax.scan(add_sample, jnp.zeros_like(x), jnp.arange(num_samples))
  return jax.vmap(minmax_normalise)(total / num_samples)


def reconstruction_error(reconstruct_fn: Callable, images: np.ndarray, *, variables: Any,
                         batch_size: int = IMAGES_PER_CALL, num_samples: int = 1,
                         rng: Optional[jax.Array] = None) -> np.ndarray:
  """Normalised per-pixel error of every image, float32 (N, H*W).

  Args:
    reconstruct_fn: a JAX function (traced under jit), batched NHWC in and out:
      `reconstruct_fn(variables, images)`, or with `rng`
      `reconstruct_fn(variables, images, keys)` (stochastic: keys (N,), one per image).
      A static argument of the jitted batches: the compilation is reused for an equal
      one (the same function, or e.g. `cvae_cls.Reconstruction` of an equal model; a
      functools.partial is equal only to itself).
    images: float (N, H, W, 1).
    batch_size: images per jitted call (the last padded): the maps of one image in calls of
      one batch_size are equal, whatever the images beside it.
    variables: model parameters (any pytree) passed to the compiled function as an
      argument; closing over them instead makes XLA constant-fold the decoder at
      compile time (seconds).
    num_samples: with `rng`, the absolute error is averaged over this many stochastic
      reconstructions before normalising.
    rng: a PRNG key; selects the stochastic mode. An image's samples use keys folded from
      fold_in(rng, c), c a checksum of its pixels (image_checksums): its map depends on the image
      alone, not on its place among `images` or the batch it falls in, so a slice scored
      again among other files (predict) gets the map it got in its run.

  Returns:
    float32 (N, H*W) in [0, 1]; each row min-max normalised (constant -> zeros).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f'images must be (N, H, W, 1), got {images.shape}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if num_samples < 1 or (num_samples > 1 and rng is None):
    raise ValueError(f'num_samples={num_samples}: it must be 1, or more with an rng')
  n, h, w, _ = images.shape
  out = np.empty((n, h * w), np.float32)
  if n == 0:
    return out
  checksums = None if rng is None else image_checksums(images)
  for start in range(0, n, batch_size):
    chunk = images[start:start + batch_size]
    valid = len(chunk)
    if valid < batch_size:  # pad so the shape (and the compilation) never changes
      padding = np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)
      chunk = np.concatenate([chunk, padding])
    keys = None if rng is None else jax.vmap(lambda c: jax.random.fold_in(rng, c))(
        np.resize(checksums[start:start + batch_size], batch_size))  # (padding: any keys)
    errors = _batch_errors(reconstruct_fn, variables, chunk, keys, num_samples)
    out[start:start + valid] = np.asarray(errors)[:valid]
  return out
