"""BrainCNN tumour classifier of the study (section 5.2), as in the PyTorch peer."""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from brainjax.models.layers import batch_norm, conv, example_keys

Array = jax.Array


@jax.custom_vjp
def max_pool_2x2(x: Array) -> Array:
  """2x2 stride-2 max pool (H, W even): nn.max_pool(x, (2, 2), (2, 2)), values and gradients.

  The gradient goes to the first maximum of each window in row-major order
  (as nn.max_pool's and torch's). The forward pass records which element that
  was (int8, a quarter of x's size), so the backward pass is one elementwise
  select instead of XLA:CPU's slow select-and-scatter, and never compares
  recomputed values.
  """
  return _max_pool_fwd(x)[0]


def _pool_windows(x: Array):
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'max_pool_2x2: spatial size must be even, got {h}x{w}')
  x = x.reshape(n, h // 2, 2, w // 2, 2, c)
  return [x[:, :, a, :, b] for a in (0, 1) for b in (0, 1)]


def _max_pool_fwd(x: Array):
  w = _pool_windows(x)
  pooled = jnp.maximum(jnp.maximum(w[0], w[1]), jnp.maximum(w[2], w[3]))
  first = jnp.where(w[0] == pooled, 0,
                    jnp.where(w[1] == pooled, 1, jnp.where(w[2] == pooled, 2, 3)))
  return pooled, first.astype(jnp.int8)


def _max_pool_bwd(first: Array, dy: Array):
  n, h, w, c = dy.shape
  shape = (1, 1, 2, 1, 2, 1)
  position = 2 * lax.broadcasted_iota(jnp.int8, shape, 2) + lax.broadcasted_iota(jnp.int8, shape, 4)
  dx = jnp.where(position == first[:, :, None, :, None], dy[:, :, None, :, None], 0)
  return (dx.reshape(n, 2 * h, 2 * w, c),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class ExampleDropout(nn.Module):
  """Dropout whose mask of example i depends only on the 'dropout' key and i's index in the
  *global* batch (`layers.example_keys`, as the generators' noise is drawn): a run on 8
  devices drops the units a 1-device run drops."""
  rate: float
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0:
      return x
    keys = example_keys(self.make_rng('dropout'), x.shape[0], self.axis_name)
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - self.rate, x.shape[1:]))(keys)
    return jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)


class BrainCNN(nn.Module):
  """Images (N, H, W, 1) in [0, 1] -> float32 logits (N, 2): healthy, tumour (as cnn_cls's
  scores read them).

  Three (3x3 conv 'same', BatchNorm, ReLU, 2x2 max-pool) blocks, flatten, dense
  layers with ReLU each preceded by dropout (rng collection 'dropout', active
  only when train=True), then a dense layer to the logits.
  """
  conv_widths: Sequence[int] = (32, 64, 128)
  dense_widths: Sequence[int] = (1024, 512, 128)
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None  # the data-parallel axis: BatchNorm's and dropout's

  @nn.compact
  def __call__(self, x: Array, train: bool, return_features: bool = False) -> Array:
    """Logits, or with return_features the last hidden activations (N, dense_widths[-1])."""
    if x.ndim != 4 or x.shape[-1] != 1:
      raise ValueError(f'BrainCNN: expected images (N, H, W, 1), got shape {x.shape}')
    pools = 2 ** len(self.conv_widths)  # one 2x2 max pool per conv block
    if x.shape[1] % pools or x.shape[2] % pools:
      raise ValueError(f'BrainCNN: image size {x.shape[1]}x{x.shape[2]} is not a multiple of '
                       f'{pools} (one 2x2 max pool per conv block)')
    x = x.astype(self.dtype)
    for width in self.conv_widths:
      x = conv(width, 3, dtype=self.dtype)(x)
      x = max_pool_2x2(nn.relu(batch_norm(train, self.axis_name, self.dtype)(x)))
    x = x.reshape(x.shape[0], -1)
    for width in self.dense_widths:
      x = ExampleDropout(self.dropout_rate, self.axis_name)(x, deterministic=not train)
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    if return_features:
      return x.astype(jnp.float32)
    return nn.Dense(2, dtype=self.dtype)(x).astype(jnp.float32)

  def features(self, x: Array) -> Array:
    """Penultimate activations in eval mode (Frechet distance, privacy audit).

    Works on variables from `init` (the logits layer is simply not read).
    """
    return self(x, train=False, return_features=True)
