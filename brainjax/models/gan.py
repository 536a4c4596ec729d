"""DCGAN-style generator and discriminator of the study (section 5.1).

Layout follows the PyTorch peer of `brainjax.bench --peer`: the generator's
dense layer gives an 8x8 map of widths[0] channels, three upsample+conv+BN+ReLU
blocks go 128->128->64->32 (16, 32, 64 px), and a last upsample + conv 32->1
+ tanh gives 128 px. (The spec's "four blocks 128->128->64->32 then a final
conv" counts the last upsample+conv as a block; the peer is the precise form.)
Images are in [-1, 1] on both sides: callers rescale real [0, 1] data.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from brainjax.models.layers import UpsampleConv, UpsampleConvBlock, check_image, conv, start_size

Array = jax.Array


class Generator(nn.Module):
  """z (N, latent_dim) -> images (N, image_size, image_size, 1) in [-1, 1].

  widths[i] is the channel count after i upsamplings; the dense map (image_size
  / 2**len(widths) px: 8 for 128) has widths[0] channels (the study's 128 x 8 x 8),
  widths[1:] are the block outputs, and the last upsample + conv gives 1.
  """
  latent_dim: int = 100
  widths: Sequence[int] = (128, 128, 64, 32)
  image_size: int = 128
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f'Generator: z must be (N, {self.latent_dim}), got shape {z.shape}')
    size = start_size(self.image_size, len(self.widths), 'Generator')
    base = self.widths[0]
    x = nn.Dense(size * size * base, dtype=self.dtype)(z.astype(self.dtype))
    x = nn.relu(x).reshape(z.shape[0], size, size, base)
    for width in self.widths[1:]:
      x = UpsampleConvBlock(width, self.dtype, self.axis_name)(x, train)
    x = UpsampleConv(1, self.dtype)(x)
    return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
  """Images in [-1, 1] -> real/fake logits of shape (N,) (float32).

  4x4 stride-2 convs (torch padding 1) with LeakyReLU(0.2), no BatchNorm,
  flatten, one dense logit. `train` is accepted for a uniform interface.
  """
  widths: Sequence[int] = (64, 128, 256, 512)
  image_size: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    check_image(x, self.image_size, 'Discriminator')
    if self.image_size >> len(self.widths) < 1:  # (each conv halves the side; 1 px -> 0)
      raise ValueError(f'Discriminator: image_size {self.image_size} is too small for '
                       f'{len(self.widths)} stride-2 convs (widths): it must be at least '
                       f'2**{len(self.widths)}')
    x = x.astype(self.dtype)
    for width in self.widths:
      x = conv(width, 4, strides=2, dtype=self.dtype)(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Dense(1, dtype=self.dtype)(x.reshape(x.shape[0], -1))
    return x[:, 0].astype(jnp.float32)
