"""Generative VAE of the study (section 5.1), one per class.

Layout follows the PyTorch peer of `brainjax.bench --peer` (its GenVAE): the spec's
"six (upsample, conv, BN, ReLU) steps 1024->...->64->1, sigmoid" is five
upsample+conv+BN+ReLU blocks 1024->512->512->256->128->64 and a last
upsample + conv 64->1 without BatchNorm, whose output goes through the sigmoid.
The decoder returns logits; the caller applies the sigmoid (vae_gen.sample_images),
so the loss can use the numerically stable BCE-with-logits.
"""
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from brainjax.models.layers import (UpsampleConv, UpsampleConvBlock, batch_norm, check_image,
                                    check_noise, conv, start_size)

Array = jax.Array


class VAEEncoder(nn.Module):
  """Stride-2 3x3 convs + BatchNorm + LeakyReLU(0.2); dense mean and log-variance heads."""
  latent_dim: int
  widths: Sequence[int]
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Tuple[Array, Array]:
    x = x.astype(self.dtype)
    for width in self.widths:
      x = conv(width, 3, strides=2, dtype=self.dtype)(x)
      x = nn.leaky_relu(batch_norm(train, self.axis_name, self.dtype)(x), 0.2)
    x = x.reshape(x.shape[0], -1)
    mean = nn.Dense(self.latent_dim, dtype=self.dtype, name='mean')(x)
    logvar = nn.Dense(self.latent_dim, dtype=self.dtype, name='logvar')(x)
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)


class VAEDecoder(nn.Module):
  """Dense to (s, s, widths[0]) + ReLU, upsample blocks, last upsample + conv to 1 logit."""
  widths: Sequence[int]
  image_size: int
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    size = start_size(self.image_size, len(self.widths), 'VAE decoder')
    x = nn.Dense(size * size * self.widths[0], dtype=self.dtype)(z.astype(self.dtype))
    x = nn.relu(x).reshape(z.shape[0], size, size, self.widths[0])
    for width in self.widths[1:]:
      x = UpsampleConvBlock(width, self.dtype, self.axis_name)(x, train)
    x = UpsampleConv(1, self.dtype)(x)
    return x.astype(jnp.float32)


class VAE(nn.Module):
  """Convolutional VAE for (N, image_size, image_size, 1) images in [0, 1].

  The encoder's len(encoder_widths) stride-2 convs and the decoder's
  len(decoder_widths) upsamplings both span image_size -> image_size / 64 with
  the defaults (128 -> 2). Outputs (logits, mean, logvar) are float32.
  """
  latent_dim: int = 512
  encoder_widths: Sequence[int] = (64, 128, 256, 512, 512, 1024)
  decoder_widths: Sequence[int] = (1024, 512, 512, 256, 128, 64)
  image_size: int = 128
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  def setup(self):
    self.encoder = VAEEncoder(self.latent_dim, self.encoder_widths, self.dtype, self.axis_name)
    self.decoder = VAEDecoder(self.decoder_widths, self.image_size, self.dtype, self.axis_name)

  def encode(self, x: Array, train: bool) -> Tuple[Array, Array]:
    """Images -> (mean, logvar), each (N, latent_dim)."""
    check_image(x, self.image_size, 'VAE')
    return self.encoder(x, train)

  def decode(self, z: Array, train: bool) -> Array:
    """Latents (N, latent_dim) -> reconstruction logits (N, H, W, 1)."""
    return self.decoder(z, train)

  def __call__(self, x: Array, noise: Array, train: bool) -> Tuple[Array, Array, Array]:
    """(recon_logits, mean, logvar); z = mean + exp(logvar / 2) * noise.

    `noise` (N, latent_dim) is standard normal from the caller, so a
    data-parallel run can feed each device its slice of the single-device noise.
    """
    mean, logvar = self.encode(x, train)
    check_noise(noise, x.shape[0], self.latent_dim, 'VAE')
    z = mean + jnp.exp(0.5 * logvar) * noise.astype(jnp.float32)
    return self.decode(z, train), mean, logvar
