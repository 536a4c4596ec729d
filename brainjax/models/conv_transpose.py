"""Exact, fast 'VALID' stride-1 transposed convolution through DFT matrices.

`lax.conv_transpose(x, k, (1, 1), 'VALID')` (what `nn.ConvTranspose(...,
padding='VALID')` runs) is a full 2-D convolution of each input channel with
the spatially flipped kernel: output size = input + kernel - 1. XLA's direct CPU
lowering spends O(H W kh kw) multiply-adds per channel pair, about a minute per
batch of 64 for BrainCVAE's 33x33 and 65x65 kernels. By the convolution theorem
the same numbers come out of: 2-D DFT of input and kernel at the output size
(zero padding makes the circular convolution linear), a channel contraction at
every frequency, and an inverse DFT.

The DFTs are dense products with small real DFT matrices instead of `jnp.fft`:
XLA's FFT only transforms minor axes, so the per-frequency channel contraction
(a batched matmul, frequencies leading) would need large transposes of complex
spectra, which cost more than the transforms here. Written as matrix products
every stage reads the layout the previous one wrote, all in real float32 GEMMs,
and autodiff of matrix products gives exact gradients with the same structure.

Internal layout is spatial-major (H, W, N, C). Spectra are kept planar (real
part, imaginary part), indexed (v, q): v the P//2 + 1 non-negative frequencies of
the real DFT along H, q the Q frequencies of the complex DFT along W.
"""
import functools
from typing import Any, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

Array = jax.Array


@functools.lru_cache(maxsize=None)
def _real_dft(n_in: int, n_out: int, reverse: bool) -> np.ndarray:
  """(2V, n_in) real DFT of size n_out, rows (v, [cos, -sin]); V = n_out//2+1.

  reverse=True transforms the input read backwards (x[n_in-1-t]): that is how
  the kernel flip of lax.conv_transpose is folded into the kernel's DFT.
  """
  v = np.arange(n_out // 2 + 1)[:, None]
  t = np.arange(n_in)[None, :]
  if reverse:
    t = t[:, ::-1]
  angle = 2 * np.pi * v * t / n_out
  return np.stack([np.cos(angle), -np.sin(angle)], 1).reshape(-1, n_in)


@functools.lru_cache(maxsize=None)
def _complex_dft(n_in: int, n_out: int, reverse: bool) -> Tuple[np.ndarray, np.ndarray]:
  """Real and imaginary output rows (n_out, 2 n_in) of a complex DFT of size n_out.

  The input is planar: [re(0..n_in-1), im(0..n_in-1)]. With c = cos, s = sin
  of the angle, (a + ib)(c - is) = (ac + bs) + i(bc - as).
  """
  u = np.arange(n_out)[:, None]
  t = np.arange(n_in)[None, :]
  if reverse:
    t = t[:, ::-1]
  angle = 2 * np.pi * u * t / n_out
  c, s = np.cos(angle), np.sin(angle)
  return np.concatenate([c, s], 1), np.concatenate([-s, c], 1)


@functools.lru_cache(maxsize=None)
def _inverse_complex_dft(n: int) -> Tuple[np.ndarray, np.ndarray]:
  """(2n, n) matrices applied to the real and to the imaginary input part.

  Output rows are planar [re(0..n-1), im(0..n-1)] of the inverse DFT (1/n,
  e^{+i angle}): (a + ib)(c + is) = (ac - bs) + i(as + bc).
  """
  angle = 2 * np.pi * np.outer(np.arange(n), np.arange(n)) / n
  c, s = np.cos(angle) / n, np.sin(angle) / n
  return np.concatenate([c, s], 0), np.concatenate([-s, c], 0)


@functools.lru_cache(maxsize=None)
def _inverse_real_dft(n: int) -> np.ndarray:
  """(n, 2V) inverse of the half-spectrum real DFT, columns (v, [re, im]).

  Like numpy's irfft: bins other than 0 and n/2 stand for their conjugate
  mirror too (weight 2); the imaginary parts of bins 0 and n/2 drop out.
  """
  v = np.arange(n // 2 + 1)[None, :]
  t = np.arange(n)[:, None]
  weight = np.where((v == 0) | (2 * v == n), 1.0, 2.0) / n
  angle = 2 * np.pi * t * v / n
  return np.stack([weight * np.cos(angle), -weight * np.sin(angle)], 2).reshape(n, -1)


def _const(a: np.ndarray) -> Array:
  return jnp.asarray(a, jnp.float32)


def _shared_matmul(m: np.ndarray, a: Array) -> Array:
  """m (M, K) applied to every a[b] (K, C): (B, K, C) -> (B, M, C)."""
  mb = jnp.broadcast_to(_const(m), (a.shape[0],) + m.shape)
  return lax.dot_general(mb, a, (((2,), (1,)), ((0,), (0,))))


def _spectrum(x: Array, out_h: int, out_w: int, reverse: bool) -> Tuple[Array, Array]:
  """x (H, W, *C) real -> planar 2-D DFT at size (out_h, out_w), each (V, Q, *C)."""
  h, w = x.shape[:2]
  channels = x.shape[2:]
  c = int(np.prod(channels))
  n_v = out_h // 2 + 1
  # Real DFT along H: one GEMM, rows (v, re/im), so a[v] is (2W, C) = [re; im].
  a = jnp.matmul(_const(_real_dft(h, out_h, reverse)), x.reshape(h, w * c))
  a = a.reshape(n_v, 2 * w, c)
  to_re, to_im = _complex_dft(w, out_w, reverse)
  re = _shared_matmul(to_re, a).reshape((n_v, out_w) + channels)
  im = _shared_matmul(to_im, a).reshape((n_v, out_w) + channels)
  return re, im


def _inverse_spectrum(re: Array, im: Array, out_h: int) -> Array:
  """Planar spectrum (V, Q, *C) -> real (out_h, Q, *C), like irfft2."""
  n_v, out_w = re.shape[:2]
  channels = re.shape[2:]
  c = int(np.prod(channels))
  from_re, from_im = _inverse_complex_dft(out_w)
  z = (_shared_matmul(from_re, re.reshape(n_v, out_w, c))
       + _shared_matmul(from_im, im.reshape(n_v, out_w, c)))
  # z is (V, [re/im, w], C): rows (v, re/im) for the real inverse along H.
  y = jnp.matmul(_const(_inverse_real_dft(out_h)), z.reshape(2 * n_v, out_w * c))
  return y.reshape((out_h, out_w) + channels)


def conv_transpose_dft_hwnc(x: Array, kernel: Array) -> Array:
  """Spatial-major form of `conv_transpose_dft`: x (H, W, N, I) -> (H+kh-1, W+kw-1, N, O)."""
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[3] != kernel.shape[2]:
    raise ValueError(f'conv_transpose_dft: need x (H, W, N, I) and kernel (kh, kw, I, O), '
                     f'got {x.shape} and {kernel.shape}')
  h, w, n, i = x.shape
  kh, kw, _, o = kernel.shape
  out_h, out_w = h + kh - 1, w + kw - 1
  x = x.astype(jnp.float32)
  kernel = kernel.astype(jnp.float32)
  x_re, x_im = _spectrum(x, out_h, out_w, False)
  # lax.conv_transpose correlates with the unflipped kernel = convolves with
  # the flipped one; the flip is folded into the kernel's DFT matrices.
  k_re, k_im = _spectrum(kernel, out_h, out_w, True)
  f = (out_h // 2 + 1) * out_w

  def contract(a, b):  # per frequency (N, I) @ (I, O)
    return lax.dot_general(a.reshape(f, n, i), b.reshape(f, i, o),
                           (((2,), (1,)), ((0,), (0,))))

  y_re = contract(x_re, k_re) - contract(x_im, k_im)
  y_im = contract(x_re, k_im) + contract(x_im, k_re)
  shape = (out_h // 2 + 1, out_w, n, o)
  return _inverse_spectrum(y_re.reshape(shape), y_im.reshape(shape), out_h)


def conv_transpose_dft(x: Array, kernel: Array) -> Array:
  """Same result as `lax.conv_transpose(x, kernel, (1, 1), 'VALID',
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`, computed in float32.

  x: (N, H, W, I); kernel: (kh, kw, I, O); returns (N, H+kh-1, W+kw-1, O) in
  x's dtype. Differentiable (plain matrix products).
  """
  if x.ndim != 4:
    raise ValueError(f'conv_transpose_dft: need x (N, H, W, I), got shape {x.shape}')
  y = conv_transpose_dft_hwnc(x.transpose(1, 2, 0, 3), kernel)
  return y.transpose(2, 0, 1, 3).astype(x.dtype)


class DFTConvTranspose(nn.Module):
  """Drop-in for `nn.ConvTranspose(features, kernel_size, padding='VALID')`
  (stride 1, transpose_kernel=False): same parameter names, shapes and
  initialisers, output computed by `conv_transpose_dft`.

  The transform runs in float32 whatever `dtype` is (exactness); the output is
  cast to `dtype`.
  """
  features: int
  kernel_size: Union[int, Sequence[int]]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel_size = ((self.kernel_size,) * 2 if isinstance(self.kernel_size, int)
                   else tuple(self.kernel_size))
    if len(kernel_size) != 2 or x.ndim != 4:
      raise ValueError(f'DFTConvTranspose: need 2-D kernel_size and NHWC input, got '
                       f'{kernel_size} and shape {x.shape}')
    # nn.ConvTranspose's initialisers; parameters in float32.
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        kernel_size + (x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    y = conv_transpose_dft(x.astype(jnp.float32), kernel).astype(self.dtype)
    return y + bias.astype(self.dtype).reshape(1, 1, 1, self.features)
