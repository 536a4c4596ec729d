"""Layers shared by the four networks, with CPU-fast exact formulations.

- `conv`: nn.Conv with torch's padding and `conv_gradients`' convolution (fast
  gradients; same parameters and values).
- `BatchNorm`: flax's, with a written-out backward pass (`normalize_batch`) that
  reads the activations fewer times.
- `UpsampleConv`: 2x nearest upsample then 3x3 conv (pad 1) without forming
  the upsampled map. Each output pixel parity (a, b) sees a 2x2 window of the
  low-resolution input whose taps are sums of the 3x3 kernel's taps, so one
  2x2 conv with 4x the output channels (one group per parity) and a
  depth-to-space interleave give the same numbers with 16/36 of the work
  (times (H+1)(W+1)/HW: the window grid has one more row and column).
"""
import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from brainjax.models.conv_gradients import NHWC
from brainjax.models.conv_gradients import conv_general_dilated

Array = jax.Array

# Explicit (1, 1) padding = torch's padding=1; flax's 'SAME' would pad a 3x3
# stride-2 conv (0, 1) instead.
TORCH_PAD1 = ((1, 1), (1, 1))


def conv(features: int, kernel_size: int, strides: int = 1,
         dtype: Any = jnp.float32) -> nn.Conv:
  """nn.Conv with torch's padding=1 and the fast kernel gradient.

  With a bias, as the peer's convs have, also before a BatchNorm, which cancels it in training:
  its gradient there is rounding noise, which Adam turns into lr-sized steps, so those biases
  (and, through the running means, eval outputs, by ~0.4% after 20 steps) differ between
  device counts more than the rest of the model does.
  """
  return nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides),
                 padding=TORCH_PAD1, dtype=dtype, conv_general_dilated=conv_general_dilated)


def batch_norm(train: bool, axis_name: Optional[str], dtype: Any):
  """BatchNorm with torch's momentum and eps (0.1 = flax's 0.9, 1e-5); flax's running variance
  (the batch's biased one, where torch keeps the unbiased)."""
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                   axis_name=axis_name, dtype=dtype)


class BatchNorm(nn.Module):
  """nn.BatchNorm over every axis but the last, whose training pass has `normalize_batch`'s
  backward pass.

  Same variables ('params': scale, bias; 'batch_stats': mean, var, all float32), values
  and running-statistics updates as flax's with its defaults; statistics are averaged
  over `axis_name` when given (not while initialising, as flax).
  """
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = (x.shape[-1],)
    mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = self.param('scale', nn.initializers.ones, features, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, features, jnp.float32)
    dtype = self.dtype or jnp.result_type(x, jnp.float32)
    if self.use_running_average:
      return _normalize(x, mean.value, lax.rsqrt(var.value + self.epsilon), scale, bias, dtype)
    initializing = self.is_initializing()
    y, batch_mean, batch_var = normalize_batch(x, scale, bias, self.epsilon,
                                               None if initializing else self.axis_name)
    if not initializing:
      mean.value = self.momentum * mean.value + (1 - self.momentum) * batch_mean
      var.value = self.momentum * var.value + (1 - self.momentum) * batch_var
    return y.astype(dtype)


def _normalize(x, mean, rstd, scale, bias, dtype):
  mean, a, bias = (_channels(v, x.ndim) for v in (mean, rstd * scale, bias))
  return ((x.astype(jnp.float32) - mean) * a + bias).astype(dtype)


def _channels(v: Array, ndim: int) -> Array:
  """Per-channel (C,) -> (1, ..., 1, C), to broadcast against (..., C)."""
  return v.reshape((1,) * (ndim - 1) + v.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize_batch(x: Array, scale: Array, bias: Array, epsilon: float,
                    axis_name: Optional[str]) -> Tuple[Array, Array, Array]:
  """(y, mean, var), float32: x (..., C) normalised by its statistics over every axis but
  the last, then scaled and shifted.

  The statistics as flax computes them: var = E[x^2] - E[x]^2 clipped at 0, both moments
  averaged over `axis_name` (None: this device's batch). The backward pass is written out,
  so XLA:CPU reads x and dy in two passes (the sums, then dx) and keeps x, not x - mean,
  for it.
  Against nn.BatchNorm, same process, steps alternated (2 cores, batch 64): BrainCNN's step
  ran 1.06-1.09x as fast, the VAE's 1.02-1.06x, the GAN's 0.99-1.02x.
  """
  return _normalize_batch_fwd(x, scale, bias, epsilon, axis_name)[0]


def _normalize_batch_fwd(x, scale, bias, epsilon, axis_name):
  xf = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean, mean_sq = xf.mean(axes), (xf * xf).mean(axes)
  if axis_name is not None:
    mean, mean_sq = lax.pmean(jnp.stack([mean, mean_sq]), axis_name)
  spread = mean_sq - mean * mean
  var = jnp.maximum(0.0, spread)
  rstd = lax.rsqrt(var + epsilon)
  y = _normalize(x, mean, rstd, scale, bias, jnp.float32)
  return (y, mean, var), (x, mean, rstd, scale, spread > 0)


def _normalize_batch_bwd(epsilon, axis_name, residuals, cotangents):
  """With a = scale * rstd, xhat = (x - mean) * rstd and M values per channel:
  dx = a dy - a sum(dy) / M - xhat a sum(dy xhat) / M, plus the terms of the mean's and
  var's own cotangents; sums over all devices of `axis_name`, as autodiff of pmean gives.
  """
  del epsilon
  x, mean, rstd, scale, var_moves = residuals  # var_moves: var was not clipped at 0
  dy, d_mean, d_var = cotangents
  axes = tuple(range(x.ndim - 1))
  dyf = dy.astype(jnp.float32)
  xhat = (x.astype(jnp.float32) - _channels(mean, x.ndim)) * _channels(rstd, x.ndim)
  sum_dy, sum_dy_xhat = dyf.sum(axes), (dyf * xhat).sum(axes)
  total = jnp.stack([sum_dy, sum_dy_xhat, d_mean, d_var])
  count = x.size // x.shape[-1]
  if axis_name is not None:
    total, count = lax.psum(total, axis_name), count * lax.axis_size(axis_name)
  all_dy, all_dy_xhat, d_mean, d_var = total
  a = scale * rstd
  d_spread = jnp.where(var_moves, 2 * d_var / rstd - a * all_dy_xhat, 0.0)
  dx = (_channels(a, x.ndim) * dyf + _channels((d_mean - a * all_dy) / count, x.ndim)
        + xhat * _channels(d_spread / count, x.ndim))
  return dx.astype(x.dtype), sum_dy_xhat, sum_dy


normalize_batch.defvjp(_normalize_batch_fwd, _normalize_batch_bwd)


def index_keys(rng: Array, first, num: int) -> Array:
  """(num,) keys fold_in(rng, first + i): one per item of a sequence by its index in it (an
  example of the global batch, a generator's sample), so what is drawn for an item does not
  depend on the batch or the device it is drawn in."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(first + jnp.arange(num))


def example_keys(rng: Array, local_batch: int, axis_name: Optional[str] = None) -> Array:
  """One PRNG key per example of this device's rows, by the example's index in the *global*
  batch (rows of device d start at d * local_batch): random draws made from them do not
  depend on how many devices share the batch."""
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * local_batch
  return index_keys(rng, offset, local_batch)


# _PHASE_ROWS[a][t]: the 3x3 kernel rows that land on row t of the 2x2 window
# for output rows of parity a. Even rows 2r read input rows r-1 (kernel row 0)
# and r (rows 1 and 2); odd rows 2r+1 read r (rows 0 and 1) and r+1 (row 2).
# The same holds for columns.
_PHASE_ROWS = (((0,), (1, 2)), ((0, 1), (2,)))


def phase_kernels(kernel: Array) -> Array:
  """(3, 3, Cin, F) -> (2, 2, Cin, 4F): the 2x2 kernel of each output parity (a, b).

  Each tap is a sum of 1-4 taps of `kernel` (adds, not a contraction: as a dot
  with the 0/1 tap matrices XLA:CPU spent more time on this than on some convs).
  """
  rows = [[sum(kernel[i] for i in _PHASE_ROWS[a][t]) for t in (0, 1)] for a in (0, 1)]
  taps = [[jnp.stack([jnp.stack([sum(rows[a][t][j] for j in _PHASE_ROWS[b][u]) for b in (0, 1)], 1)
                      for a in (0, 1)], 1)  # (Cin, a, b, F)
           for u in (0, 1)] for t in (0, 1)]
  cin, f = kernel.shape[2:]
  return jnp.stack([jnp.stack(row, 0) for row in taps], 0).reshape(2, 2, cin, 4 * f)


class UpsampleConv(nn.Module):
  """A 3x3 pad-1 conv of x upsampled 2x nearest-neighbour (torch nn.Upsample(2)), same
  parameters as that nn.Conv."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, h, w, cin = x.shape
    f = self.features
    # nn.Conv's initialisers; parameters in float32.
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (3, 3, cin, f), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (f,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv_general_dilated(x, phase_kernels(kernel), (1, 1), TORCH_PAD1,  # (N, H+1, W+1, 4F)
                             dimension_numbers=NHWC)
    y = y.reshape(n, h + 1, w + 1, 2, 2, f)
    # Output pixel (2r+a, 2c+b) is window (r+a, c+b) of parity (a, b).
    rows = [jnp.stack([y[:, a:a + h, b:b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
    y = jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, f)
    return y + bias.reshape(1, 1, 1, f)


class UpsampleConvBlock(nn.Module):
  """2x nearest upsample, 3x3 conv (pad 1), BatchNorm, ReLU."""
  features: int
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = UpsampleConv(self.features, self.dtype, name='Conv_0')(x)
    return nn.relu(batch_norm(train, self.axis_name, self.dtype)(x))


def check_image(x: Array, image_size: int, who: str) -> None:
  if x.ndim != 4 or x.shape[1:] != (image_size, image_size, 1):
    raise ValueError(
        f'{who}: expected images (N, {image_size}, {image_size}, 1), got shape {x.shape}')


def check_noise(noise: Array, batch: int, latent_dim: int, who: str) -> None:
  if noise.shape != (batch, latent_dim):
    raise ValueError(f'{who}: noise must have shape ({batch}, {latent_dim}), got {noise.shape}')


def start_size(image_size: int, n_upsamples: int, who: str) -> int:
  """Side of the first decoder feature map: image_size / 2**n_upsamples."""
  size = image_size >> n_upsamples
  if size < 1 or size << n_upsamples != image_size:
    raise ValueError(f'{who}: image_size {image_size} is not a multiple of 2**{n_upsamples}')
  return size
