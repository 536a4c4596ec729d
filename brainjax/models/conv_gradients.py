"""Convolutions whose gradients are chosen per backend for speed; values are lax's.

`conv_general_dilated`: lax's convolution with backend-chosen gradients. Both
gradients are sums over pixels and taps of small matrix products, i.e. GEMMs
over im2col copies (`_gemm_conv_grads`). XLA:CPU's own (a kernel gradient is
a convolution whose window is the whole output map, a strided conv's input
gradient an input-dilated conv) were 5-100x slower than the forward pass
when YNNPACK ran them; in Eigen (`compile_options`) some are faster than the
GEMMs and some still up to 330x slower, so `cpu_gradients` picks per
gradient (a strided conv's input gradient also from a stride-1 conv on pixel
blocks, `_block_input_gradient`); on a GPU `gpu_gradients` picks between the
GEMMs and cuDNN's.
Other backends keep lax's gradients (`lax.platform_dependent`). On CPU the
forward pass of a 1-channel input (the image layers) is a fused sum over taps
(`_tap_sum_conv`). Pass it to nn.Conv (`conv_general_dilated=`); parameters
and values are unchanged.
"""
import functools
from typing import Tuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

NHWC = ('NHWC', 'HWIO', 'NHWC')  # the (input, kernel, output) layouts of every convolution here


def _lax_conv(x: Array, kernel: Array, strides, padding, precision) -> Array:
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC,
                                  precision=precision)


def _tap_sum_conv(x: Array, kernel: Array, strides, padding) -> Array:
  """A conv of a 1-channel input (N, H, W, 1) as a sum over taps: each tap's strided slice
  of the padded input times that tap's row of output channels, accumulated in float32.

  XLA:CPU writes it in one fused pass; Eigen ran such convs 2-6x slower (2 cores, batch
  64: BrainCNN's 3x3 1 -> 32 at 128 px 6.8 against 37.9 ms, the discriminator's 4x4
  stride-2 1 -> 64 7.3 against 14.4 ms, the VAE's 3x3 stride-2 1 -> 64 3.3 against 12.6).
  Same process, steps alternated: BrainCNN's train step 1.01-1.06x as fast (five runs);
  the other networks' steps unchanged within noise.
  """
  kh, kw, _, cout = kernel.shape
  sh, sw = strides
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0),) + tuple(padding) + ((0, 0),))
  out_h, out_w = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  rows = kernel.astype(jnp.float32).reshape(kh * kw, cout)  # taps in _strided_taps' order
  y = sum(tap * row.reshape(1, 1, 1, cout)
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
  """Each gradient from lax (cuDNN's on a GPU), `_gemm_conv_grads` or `_block_input_gradient`,
  by a rule per backend (`cpu_gradients`, `gpu_gradients`). TPUs and other backends keep lax's.

  XLA drops what a method computes beyond the gradient taken from it.
  """
  x, kernel = residuals

  def picked(rule):
    def grads(x, kernel, dy):
      dx_from, dk_from = rule(kernel.shape, strides)
      args = (strides, padding, precision, x, kernel, dy)
      if dx_from == dk_from:
        return _GRADIENTS[dx_from](*args)
      return _GRADIENTS[dx_from](*args)[0], _GRADIENTS[dk_from](*args)[1]
    return grads

  return lax.platform_dependent(
      x, kernel, dy, cpu=picked(cpu_gradients), cuda=picked(gpu_gradients),
      default=functools.partial(_lax_conv_grads, strides, padding, precision))


def cpu_gradients(kernel_shape, strides) -> Tuple[str, str]:
  """(input gradient's method, kernel gradient's method) on XLA:CPU, each 'gemm', 'lax' or
  'blocks' (`_block_input_gradient`, input gradients only), with Eigen's convolutions
  (`compile_options`) behind lax's and the blocks'.

  Batch 64, 2 cores: lax's kernel gradient took 55 ms against 72 ms (3x3 stride 2, 128 -> 256
  channels at 32 px) and 107 against 160 ms (4x4 stride 2, 64 -> 128 at 64 px), but 4.6-27.5 s
  against 33-84 ms for the 2x2 phase kernels of `UpsampleConv`. lax's input gradient took
  45 ms against 55 ms for a 3x3 stride-1 conv (64 -> 128 at 32 px) and 56 against 47 ms when
  strided (an input-dilated convolution). For the 2x2 phase kernels it took 5-48% less time
  per layer, but the GAN's step only 2450 against 2491 ms (noise), so they keep the GEMMs.
  Where the stride divides the kernel (the discriminator's 4x4 stride-2 convs), the blocks'
  input gradient took 147, 124 and 112 ms against the GEMMs' 341, 202 and 133 ms and lax's
  367, 236 and 139 ms (64 -> 128 at 64 px, 128 -> 256 at 32, 256 -> 512 at 16); with one
  input channel (the image layer) 24 against 12 ms; for 3x3 stride-2 convs, which it pads to
  4x4, mostly more. The whole steps saved less than the layers alone: the discriminator's
  gradient at batch 128 took 1979 against 2093 ms, the GAN's step 2937 against 3093 ms (same
  process, alternated).
  """
  kh, kw, cin, _ = kernel_shape
  large_kernel = kh >= 3 and kw >= 3
  if _windows_are_whole_blocks(kernel_shape, strides) and cin > 1:
    dx_from = 'blocks'
  else:
    dx_from = 'lax' if large_kernel and tuple(strides) == (1, 1) else 'gemm'
  return dx_from, 'lax' if large_kernel and cin > 1 else 'gemm'


def gpu_gradients(kernel_shape, strides) -> Tuple[str, str]:
  """(input gradient's method, kernel gradient's method) on an NVIDIA GPU, 'gemm' or 'lax'
  (cuDNN's convolutions).

  Each gradient of each layer of the four networks timed alone on an H200 (TF32, batch 64 and
  the discriminator's 128): the GEMMs won both gradients of the 1-channel image layers (cuDNN
  0.07-0.29 ms against 0.04-0.10) and the kernel gradients of `UpsampleConv`'s 2x2 phase
  kernels from 8 px up (0.11-1.39 against 0.04-0.17 ms, one tie); cuDNN won most of the rest,
  by up to 2.4x. The rule gives away the few layers where the other choice won by less: the
  GEMMs elsewhere by 0.09 ms at most, cuDNN's 2x2 kernel gradients at 2 and 4 px by 0.015 ms
  (the VAE's step: 4.27 ms against 4.03 with every gradient's winner). Whole steps, float32,
  against cuDNN's gradients throughout: GAN 5.51 -> 3.73 ms, VAE 6.42 -> 4.27, BrainCNN
  2.08 -> 1.90, BrainCVAE 2.23 -> 2.14; bfloat16 GAN 3.94 -> 3.49.
  """
  del strides
  kh, kw, cin, _ = kernel_shape
  gemm = lambda wins: 'gemm' if wins else 'lax'
  return gemm(cin == 1), gemm(cin == 1 or (kh, kw) == (2, 2))


def _lax_conv_grads(strides, padding, precision, x, kernel, dy):
  conv = lambda a, b: _lax_conv(a, b, strides, padding, precision)
  return jax.vjp(conv, x, kernel)[1](dy)


def _windows_are_whole_blocks(kernel_shape, strides) -> bool:
  """Whether a strided conv's windows are whole s x s pixel blocks: the stride divides the
  kernel."""
  kh, kw = kernel_shape[:2]
  sh, sw = strides
  return (sh, sw) != (1, 1) and kh % sh == 0 and kw % sw == 0


def _space_to_depth(a: Array, sh: int, sw: int) -> Array:
  """(N, H, W, C) -> (N, H/sh, W/sw, sh sw C): each sh x sw block of pixels as one pixel,
  whose channel (r, t, c) is channel c of the block's pixel (r, t)."""
  n, h, w, c = a.shape
  a = a.reshape(n, h // sh, sh, w // sw, sw, c).transpose(0, 1, 3, 2, 4, 5)
  return a.reshape(n, h // sh, w // sw, sh * sw * c)


def _depth_to_space(a: Array, sh: int, sw: int) -> Array:
  """The inverse of `_space_to_depth`: (N, Hb, Wb, sh sw C) -> (N, Hb sh, Wb sw, C)."""
  n, hb, wb, c = a.shape
  c //= sh * sw
  a = a.reshape(n, hb, wb, sh, sw, c).transpose(0, 1, 3, 2, 4, 5)
  return a.reshape(n, hb * sh, wb * sw, c)


def _block_input_gradient(strides, padding, precision, x, kernel, dy):
  """(dx, None): the input gradient of a strided conv as a stride-1 conv of dy on s x s
  pixel blocks.

  With the padded input cut into s x s blocks (space-to-depth, s s Cin channels per block),
  a stride-s kh x kw window is ceil(kh / s) x ceil(kw / s) whole blocks (the kernel padded
  with zero taps to whole blocks), so the forward pass is a stride-1 VALID conv on the block
  grid and its input gradient the full stride-1 conv of dy with that kernel flipped, one
  block of s s input pixels per output pixel (depth-to-space). lax's own is a convolution
  of dy dilated with s - 1 zeros between pixels (slower on XLA:CPU: `cpu_gradients`).
  """
  _, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  sh, sw = strides
  (top, _), (left, _) = padding
  th, tw = -(-kh // sh), -(-kw // sw)  # blocks per window
  k = jnp.pad(kernel, ((0, th * sh - kh), (0, tw * sw - kw), (0, 0), (0, 0)))
  # Tap (p sh + r, q sw + t) is block tap (p, q), channel (r, t, c); flipped, with input and
  # output channels swapped, for the gradient.
  k = _space_to_depth(k.reshape(1, th * sh, tw * sw, cin * cout), sh, sw)
  k = jnp.flip(k.reshape(th, tw, sh * sw * cin, cout), (0, 1)).swapaxes(2, 3)
  g = lax.conv_general_dilated(dy, k, (1, 1), ((th - 1, th - 1), (tw - 1, tw - 1)),
                               dimension_numbers=NHWC, precision=precision)
  dxp = _depth_to_space(g, sh, sw)  # the pixels of the blocks the windows reach
  # Padded-input pixels past the last window get no gradient.
  _, hp, wp, _ = dxp.shape
  dxp = jnp.pad(dxp, ((0, 0), (0, max(0, top + h - hp)), (0, max(0, left + w - wp)), (0, 0)))
  return dxp[:, top:top + h, left:left + w].astype(x.dtype), None


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
    # 512 -> 1024 channels, batch 64); `cpu_gradients` says where it is used.
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
  the first, on the 1-channel image, comes here; `cpu_gradients` gives the wider
  ones to lax), the patches come from s x s pixel blocks (space-to-depth): a stride-s
  kh x kw window is (kh/s)(kw/s) whole blocks, so the patches are (kh/s)(kw/s)
  slices of the blocks instead of kh kw strided slices of xp. XLA:CPU writes
  them in one fused pass either way, which costs less with fewer slices (measured
  when the 64 -> 128 conv at 64 px still came here, batch 128: 345 against 569
  thread-ms for the patches).
  """
  kh, kw, cin, cout = kernel_shape
  sh, sw = strides
  _, out_h, out_w, _ = dy.shape
  blocked = _windows_are_whole_blocks(kernel_shape, strides)
  if blocked:
    th, tw = kh // sh, kw // sw  # blocks per window
    hb, wb = out_h - 1 + th, out_w - 1 + tw  # blocks the windows reach
    blocks = _space_to_depth(xp[:, :hb * sh, :wb * sw], sh, sw)
    parts = [blocks[:, p:p + out_h, q:q + out_w] for p in range(th) for q in range(tw)]
  else:
    parts = _strided_taps(xp, kh, kw, strides, out_h, out_w)
  patches = _concat_channels(parts)
  dk = _matmul(patches.reshape(-1, kh * kw * cin), dy.reshape(-1, cout), ((0,), (0,)), precision)
  if blocked:  # tap (p sh + r, q sw + t) sits at (p, q, r, t) in the patches
    dk = _depth_to_space(dk.reshape(1, th, tw, sh * sw * cin * cout), sh, sw)
  return dk.reshape(kernel_shape)


# (input gradient, kernel gradient) of each method `cpu_gradients` and `gpu_gradients` name.
_GRADIENTS = {'gemm': _gemm_conv_grads, 'lax': _lax_conv_grads, 'blocks': _block_input_gradient}

_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with `_conv_bwd`'s gradients for plain 2-D NHWC convs.

  Other configurations (dilation, groups, other layouts, negative padding, an empty output)
  go to lax unchanged.
  """
  plain = (lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count == 1
           and batch_group_count == 1 and preferred_element_type is None
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and dimension_numbers is not None  # (None: lax's NCHW)
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))
  if plain:
    strides = tuple(int(s) for s in window_strides)
    pads = explicit_padding(lhs.shape, rhs.shape, strides, padding)
    out_sizes = [(n + lo + hi - k) // s + 1
                 for n, k, s, (lo, hi) in zip(lhs.shape[1:3], rhs.shape[:2], strides, pads)]
    # (Negative padding crops the input.)
    if min(min(pair) for pair in pads) >= 0 and min(out_sizes) > 0:
      return _conv(lhs, rhs, strides, pads, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, batch_group_count,
                                  precision, preferred_element_type)


def explicit_padding(lhs_shape, rhs_shape, strides, padding):
  """NHWC/HWIO `padding` ('SAME', 'VALID' or pairs) as ((top, bottom), (left, right)) ints."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], strides, padding)
  return tuple(tuple(int(p) for p in pair) for pair in padding)
