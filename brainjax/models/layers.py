"""Layers shared by the four networks, with CPU-fast exact formulations.

- `conv_general_dilated`: lax's convolution with backend-chosen gradients. Both
  gradients are sums over pixels and taps of small matrix products, i.e. GEMMs
  over im2col copies (`_gemm_conv_grads`). XLA:CPU's own (a kernel gradient is
  a convolution whose window is the whole output map, a strided conv's input
  gradient an input-dilated conv) were 5-100x slower than the forward pass
  when YNNPACK ran them; in Eigen (`compile_options`) some are faster than the
  GEMMs and some still up to 330x slower, so `cpu_gemm_gradients` picks per
  gradient; on a GPU `gpu_gemm_gradients` picks between the GEMMs and cuDNN's.
  Other backends keep lax's gradients (`lax.platform_dependent`). On CPU the
  forward pass of a 1-channel input (the image layers) is a fused sum over taps
  (`_tap_sum_conv`). Pass it to nn.Conv (`conv_general_dilated=`); parameters
  and values are unchanged.
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

Array = jax.Array

# Explicit (1, 1) padding = torch's padding=1; flax's 'SAME' would pad a 3x3
# stride-2 conv (0, 1) instead.
TORCH_PAD1 = ((1, 1), (1, 1))
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _lax_conv(x: Array, kernel: Array, strides, padding, precision) -> Array:
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _tap_sum_conv(x: Array, kernel: Array, strides, padding) -> Array:
  """A conv of a 1-channel input (N, H, W, 1) as a sum over taps: each tap's strided slice
  of the padded input times that tap's row of output channels, accumulated in float32.

  XLA:CPU writes it in one fused pass; Eigen ran such convs 2-6x slower (2 cores, batch
  64: BrainCNN's 3x3 1 -> 32 at 128 px 6.8 against 37.9 ms, the discriminator's 4x4
  stride-2 1 -> 64 7.3 against 14.4 ms, the VAE's 3x3 stride-2 1 -> 64 3.3 against 12.6).
  Same process, steps alternated: BrainCNN's train step 1.01-1.06x as fast (five runs);
  the other networks' steps unchanged within noise (issue #7's notes).
  """
  kh, kw, _, cout = kernel.shape
  sh, sw = strides
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0),) + tuple(padding) + ((0, 0),))
  out_h, out_w = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  rows = kernel.astype(jnp.float32).reshape(kh * kw, cout)  # taps in _strided_taps' order
  y = sum(tap * _channels(row, 4)
          for tap, row in zip(_strided_taps(xp, kh, kw, strides, out_h, out_w), rows))
  return y.astype(x.dtype)


def _strided_taps(xp: Array, kh: int, kw: int, strides, out_h: int, out_w: int):
  """Per tap (a, b) of a kh x kw window, row-major: (N, out_h, out_w, C), the pixel of the
  padded input xp under that tap for every output position."""
  n, _, _, c = xp.shape
  sh, sw = strides
  return [lax.slice(xp, (0, a, b, 0), (n, a + sh * (out_h - 1) + 1, b + sw * (out_w - 1) + 1, c),
                    (1, sh, sw, 1))
          for a in range(kh) for b in range(kw)]


def _conv_forward(x: Array, kernel: Array, strides, padding, precision) -> Array:
  """lax's convolution, or on CPU `_tap_sum_conv` when the input has one channel."""
  if kernel.shape[2] != 1:
    return _lax_conv(x, kernel, strides, padding, precision)
  return lax.platform_dependent(
      x, kernel, cpu=lambda x, kernel: _tap_sum_conv(x, kernel, strides, padding),
      default=lambda x, kernel: _lax_conv(x, kernel, strides, padding, precision))


# The convolution of `conv_general_dilated`; its gradients are _conv_bwd's.
_conv = jax.custom_vjp(_conv_forward, nondiff_argnums=(2, 3, 4))


def _conv_fwd(x, kernel, strides, padding, precision):
  return _conv(x, kernel, strides, padding, precision), (x, kernel)


def _concat_channels(parts) -> Array:
  """jnp.concatenate(parts, axis=-1) of equally shaped parts, as a sum of zero-padded parts.

  XLA:CPU writes the sum in one fused pass; its concatenate first copied every
  sliced or padded part to a buffer of its own (im2col of the BrainCNN's 64 px
  layer, batch 64: 43 ms against 68 ms).
  """
  c = parts[0].shape[-1]
  zero = jnp.zeros((), parts[0].dtype)
  no_pad = ((0, 0, 0),) * (parts[0].ndim - 1)
  return sum(lax.pad(part, zero, no_pad + ((c * i, c * (len(parts) - 1 - i), 0),))
             for i, part in enumerate(parts))


def _shifted_copies(a: Array, kh: int, kw: int) -> Array:
  """(N, H, W, C) -> (N, H+kh-1, W+kw-1, kh*kw*C): a moved down t and right u, per tap (t, u)."""
  return _concat_channels([jnp.pad(a, ((0, 0), (t, kh - 1 - t), (u, kw - 1 - u), (0, 0)))
                           for t in range(kh) for u in range(kw)])


def _matmul(a: Array, b: Array, contract, precision) -> Array:
  return lax.dot_general(a, b, (contract, ((), ())), precision=precision,
                         preferred_element_type=jnp.float32)


def _conv_bwd(strides, padding, precision, residuals, dy):
  """Each gradient from lax (cuDNN's on a GPU) or from `_gemm_conv_grads`, by a rule per backend.

  XLA computes both and drops the ones not returned. TPUs and other backends keep lax's.
  """
  x, kernel = residuals

  def picked(gemm_for):
    def grads(x, kernel, dy):
      gemm_dx, gemm_dk = _gemm_conv_grads(strides, padding, precision, x, kernel, dy)
      lax_dx, lax_dk = _lax_conv_grads(strides, padding, precision, x, kernel, dy)
      gemm_dx_wins, gemm_dk_wins = gemm_for(kernel.shape, strides)
      return gemm_dx if gemm_dx_wins else lax_dx, gemm_dk if gemm_dk_wins else lax_dk
    return grads

  return lax.platform_dependent(
      x, kernel, dy, cpu=picked(cpu_gemm_gradients), cuda=picked(gpu_gemm_gradients),
      default=functools.partial(_lax_conv_grads, strides, padding, precision))


def cpu_gemm_gradients(kernel_shape, strides) -> Tuple[bool, bool]:
  """(GEMM input gradient?, GEMM kernel gradient?) on XLA:CPU, with Eigen's convolutions
  (`compile_options`) as the alternative.

  Batch 64, 2 cores: lax's kernel gradient took 55 ms against 72 ms (3x3 stride 2, 128 -> 256
  channels at 32 px) and 107 against 160 ms (4x4 stride 2, 64 -> 128 at 64 px), but 4.6-27.5 s
  against 33-84 ms for the 2x2 phase kernels of `UpsampleConv`. lax's input gradient took
  45 ms against 55 ms for a 3x3 stride-1 conv (64 -> 128 at 32 px) and 56 against 47 ms when
  strided (an input-dilated convolution). For the 2x2 phase kernels it took 5-48% less time
  per layer, but the GAN's step only 2450 against 2491 ms (noise), so they keep the GEMMs.
  """
  kh, kw, cin, _ = kernel_shape
  large_kernel = kh >= 3 and kw >= 3
  return not (large_kernel and tuple(strides) == (1, 1)), not (large_kernel and cin > 1)


def gpu_gemm_gradients(kernel_shape, strides) -> Tuple[bool, bool]:
  """(GEMM input gradient?, GEMM kernel gradient?) on an NVIDIA GPU, cuDNN's convolutions
  being the alternative.

  Each gradient of each layer of the four networks timed alone on an H200 (TF32, batch 64 and
  the discriminator's 128): the GEMMs won both gradients of the 1-channel image layers (cuDNN
  0.07-0.29 ms against 0.04-0.10) and the kernel gradients of `UpsampleConv`'s 2x2 phase
  kernels from 8 px up (0.11-1.39 against 0.04-0.17 ms, one tie); cuDNN won most of the rest,
  by up to 2.4x. The rule gives away the few layers where the other choice won by less: the
  GEMMs elsewhere by 0.09 ms at most, cuDNN's 2x2 kernel gradients at 2 and 4 px by 0.015 ms
  (the VAE's step: 4.27 ms against 4.03 with every gradient's winner). Whole steps, float32,
  against cuDNN's gradients throughout: GAN 5.51 -> 3.73 ms, VAE 6.42 -> 4.27, BrainCNN
  2.08 -> 1.90, BrainCVAE 2.23 -> 2.14; bfloat16 GAN 3.94 -> 3.49 (issue #7's notes).
  """
  del strides
  kh, kw, cin, _ = kernel_shape
  return cin == 1, cin == 1 or (kh, kw) == (2, 2)


def _lax_conv_grads(strides, padding, precision, x, kernel, dy):
  conv = lambda a, b: _lax_conv(a, b, strides, padding, precision)
  return jax.vjp(conv, x, kernel)[1](dy)


def _gemm_conv_grads(strides, padding, precision, x, kernel, dy):
  """Both gradients as GEMMs over im2col-style copies of whichever side is smaller."""
  n, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  _, out_h, out_w, _ = dy.shape
  sh, sw = strides
  (top, bottom), (left, right) = padding
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  hp, wp = xp.shape[1:3]
  if strides == (1, 1) and cout < cin:
    # Few output channels (the 1-channel image layers): shifted copies of dy,
    # (N, Hp, Wp, kh kw Cout), serve both gradients.
    dy_taps = _shifted_copies(dy, kh, kw)
    dk = _matmul(xp.reshape(-1, cin), dy_taps.reshape(-1, kh * kw * cout), ((0,), (0,)), precision)
    dk = dk.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)
    dxp = _matmul(dy_taps, kernel.reshape(kh * kw, cin, cout).transpose(0, 2, 1).reshape(-1, cin),
                  ((3,), (0,)), precision)
  else:
    dk = _kernel_gradient(xp, dy, kernel.shape, strides, precision)
    # Input gradient: dy times the kernel gives every tap's patch gradient, and
    # col2im adds each tap's share back at its (strided) input position. lax's
    # own is an input-dilated conv when strided (in YNNPACK 5.6 s for 4 -> 2 px,
    # 512 -> 1024 channels, batch 64); `cpu_gemm_gradients` says where it is used.
    cols = _matmul(dy, kernel.reshape(-1, cout), ((3,), (1,)), precision).reshape(
        n, out_h, out_w, kh, kw, cin)
    dxp = sum(lax.pad(cols[:, :, :, a, b], jnp.zeros((), cols.dtype),
                      ((0, 0, 0), (a, hp - a - sh * (out_h - 1) - 1, sh - 1),
                       (b, wp - b - sw * (out_w - 1) - 1, sw - 1), (0, 0, 0)))
              for a in range(kh) for b in range(kw))
  dx = dxp[:, top:top + h, left:left + w]
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


def _kernel_gradient(xp: Array, dy: Array, kernel_shape, strides, precision) -> Array:
  """im2col patches of the padded input xp times dy: (kh, kw, Cin, Cout).

  When the stride divides the kernel (4x4 stride 2: of the discriminator's convs only
  the first, on the 1-channel image, comes here; `cpu_gemm_gradients` gives the wider
  ones to lax), the patches come from s x s pixel blocks (space-to-depth): a stride-s
  kh x kw window is (kh/s)(kw/s) whole blocks, so the patches are (kh/s)(kw/s)
  slices of the blocks instead of kh kw strided slices of xp. XLA:CPU writes
  them in one fused pass either way, which costs less with fewer slices (measured
  when the 64 -> 128 conv at 64 px still came here, batch 128: 345 against 569
  thread-ms for the patches).
  """
  kh, kw, cin, cout = kernel_shape
  sh, sw = strides
  n, out_h, out_w, _ = dy.shape
  blocked = (sh, sw) != (1, 1) and kh % sh == 0 and kw % sw == 0
  if blocked:
    th, tw = kh // sh, kw // sw  # blocks per window
    hb, wb = out_h - 1 + th, out_w - 1 + tw  # blocks the windows reach
    blocks = xp[:, :hb * sh, :wb * sw].reshape(n, hb, sh, wb, sw, cin)
    blocks = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(n, hb, wb, sh * sw * cin)
    parts = [blocks[:, p:p + out_h, q:q + out_w] for p in range(th) for q in range(tw)]
  else:
    parts = _strided_taps(xp, kh, kw, strides, out_h, out_w)
  patches = _concat_channels(parts)
  dk = _matmul(patches.reshape(-1, kh * kw * cin), dy.reshape(-1, cout), ((0,), (0,)), precision)
  if blocked:  # tap (a, b) = (p sh + r, q sw + t) sits at (p, q, r, t) in the patches
    dk = dk.reshape(th, tw, sh, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  return dk.reshape(kernel_shape)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with `_conv_bwd`'s gradients for plain 2-D NHWC convs.

  Other configurations (dilation, groups, other layouts) go to lax unchanged.
  """
  plain = (lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count == 1
           and batch_group_count == 1 and preferred_element_type is None
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and (dimension_numbers is None
                or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
                == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)))
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  return _conv(lhs, rhs, strides, explicit_padding(lhs.shape, rhs.shape, strides, padding),
               precision)


def explicit_padding(lhs_shape, rhs_shape, strides, padding):
  """NHWC/HWIO `padding` ('SAME', 'VALID' or pairs) as ((top, bottom), (left, right)) ints."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], strides, padding)
  return tuple(tuple(int(p) for p in pair) for pair in padding)


def conv(features: int, kernel_size: int, strides: int = 1,
         dtype: Any = jnp.float32) -> nn.Conv:
  """nn.Conv with torch's padding=1 and the fast kernel gradient."""
  return nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides),
                 padding=TORCH_PAD1, dtype=dtype, conv_general_dilated=conv_general_dilated)


def batch_norm(train: bool, axis_name: Optional[str], dtype: Any):
  """BatchNorm with torch's defaults (momentum 0.1 = flax 0.9, eps 1e-5)."""
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
  ran 1.06-1.09x as fast, the VAE's 1.02-1.06x, the GAN's 0.99-1.02x (issue #7's notes).
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


def example_keys(rng: Array, local_batch: int, axis_name: Optional[str] = None) -> Array:
  """One PRNG key per example of this device's rows, fold_in(rng, i) with i the example's
  index in the *global* batch (rows of device d start at d * local_batch): random draws made
  from them do not depend on how many devices share the batch."""
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * local_batch
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(offset + jnp.arange(local_batch))


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
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()  # nn.Conv's defaults
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, h, w, cin = x.shape
    f = self.features
    kernel = self.param('kernel', self.kernel_init, (3, 3, cin, f), self.param_dtype)
    bias = self.param('bias', self.bias_init, (f,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv_general_dilated(x, phase_kernels(kernel), (1, 1), TORCH_PAD1)  # (N, H+1, W+1, 4F)
    y = y.reshape(n, h + 1, w + 1, 2, 2, f)
    # Output pixel (2r+a, 2c+b) is window (r+a, c+b) of parity (a, b).
    rows = [jnp.stack([y[:, a:a + h, b:b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
    y = jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, f)
    return y + bias.reshape(1, 1, 1, f)


class UpsampleConvBlock(nn.Module):
  """2x nearest upsample, 3x3 conv (pad 1), BatchNorm, ReLU."""
  features: int
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = UpsampleConv(self.features, self.dtype, name='Conv_0')(x)
    return nn.relu(batch_norm(train, self.bn_axis_name, self.dtype)(x))


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
