"""BrainCVAE anomaly model of the study (section 5.2), as in the PyTorch peer.

The two large transposed convolutions (kernels S/4+1 and S/2+1, 33 and 65 at
128 px) use `DFTConvTranspose`: same parameters and results as
nn.ConvTranspose(..., padding='VALID'), minutes faster per step on CPU.
"""
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from brainjax.models.conv_transpose import DFTConvTranspose
from brainjax.models.layers import check_image, check_noise, conv

Array = jax.Array


class CVAEEncoder(nn.Module):
  latent_dim: int
  widths: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Tuple[Array, Array]:
    x = x.astype(self.dtype)
    for width in self.widths:
      x = nn.relu(conv(width, 3, strides=2, dtype=self.dtype)(x))
    x = x.reshape(x.shape[0], -1)
    mean = nn.Dense(self.latent_dim, dtype=self.dtype, name='mean')(x)
    logvar = nn.Dense(self.latent_dim, dtype=self.dtype, name='logvar')(x)
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)


class CVAEDecoder(nn.Module):
  """z -> dense (S/4, S/4, widths[-1]) + ReLU -> S/2 px widths[0] + ReLU -> S px, sigmoid."""
  widths: Sequence[int]
  image_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    quarter, half = self.image_size // 4, self.image_size // 2
    x = nn.Dense(quarter * quarter * self.widths[-1], dtype=self.dtype)(z.astype(self.dtype))
    x = nn.relu(x).reshape(z.shape[0], quarter, quarter, self.widths[-1])
    # 'VALID' transposed convs grow by kernel - 1: S/4 -> S/2 -> S.
    # Named like nn.ConvTranspose's auto names, so either module fits one tree.
    x = DFTConvTranspose(self.widths[0], quarter + 1, dtype=self.dtype, name='ConvTranspose_0')(x)
    x = nn.relu(x)
    x = DFTConvTranspose(1, half + 1, dtype=self.dtype, name='ConvTranspose_1')(x)
    # Sigmoid, not clipping: the reconstruction must live in the image range
    # [0, 1] for the anomaly maps |x - recon| and their thresholds to be
    # comparable with the data, and a sigmoid keeps gradients everywhere.
    return nn.sigmoid(x.astype(jnp.float32))


class BrainCVAE(nn.Module):
  """Convolutional VAE trained on healthy slices; its reconstruction error flags tumours.

  conv_widths are the encoder's stride-2 conv widths (32, 64); the decoder
  mirrors them (dense map widths[-1] channels, first transposed conv widths[0]).
  """
  latent_dim: int = 64
  conv_widths: Sequence[int] = (32, 64)
  image_size: int = 128
  dtype: Any = jnp.float32

  def setup(self):
    if len(self.conv_widths) != 2 or self.image_size % 4:
      raise ValueError(f'BrainCVAE: needs two conv widths and image_size divisible by 4, got '
                       f'{self.conv_widths} and {self.image_size}')
    self.encoder = CVAEEncoder(self.latent_dim, self.conv_widths, self.dtype)
    self.decoder = CVAEDecoder(self.conv_widths, self.image_size, self.dtype)

  def encode(self, x: Array) -> Tuple[Array, Array]:
    check_image(x, self.image_size, 'BrainCVAE')
    return self.encoder(x)

  def decode(self, z: Array) -> Array:
    """Latents (N, latent_dim) -> images (N, S, S, 1) in [0, 1]."""
    return self.decoder(z)

  def __call__(self, x: Array, noise: Array, train: bool = False) -> Tuple[Array, Array, Array]:
    """(recon in [0, 1], mean, logvar); z = mean + exp(logvar / 2) * noise.

    `noise` (N, latent_dim) is standard normal from the caller, as for the VAE.
    `train` is accepted for a uniform interface (no BatchNorm or dropout here).
    """
    del train
    mean, logvar = self.encode(x)
    check_noise(noise, x.shape[0], self.latent_dim, 'BrainCVAE')
    z = mean + jnp.exp(0.5 * logvar) * noise.astype(jnp.float32)
    return self.decode(z), mean, logvar

  def reconstruct(self, x: Array) -> Array:
    """Deterministic reconstruction from z = mean (the anomaly rules' default)."""
    mean, _ = self.encode(x)
    return self.decode(mean)
