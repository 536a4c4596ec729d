"""Data parallelism: which devices a run uses, and per-example randomness that does not
depend on how the global batch is split across them."""
import jax
import jax.numpy as jnp
import numpy as np

AXIS = 'batch'  # the pmap axis name; BatchNorm statistics and gradients are averaged over it


def local_devices(num_devices):
  """The first `num_devices` local devices (-1: all). Raises if more are asked than exist."""
  devices = jax.local_devices()
  if num_devices == -1:
    return devices
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f'num_devices={num_devices}, but {len(devices)} local devices exist')
  return devices[:num_devices]


def shard(batch, num_devices):
  """(B, ...) host arrays -> (num_devices, B / num_devices, ...)."""
  def split(x):
    if x.shape[0] % num_devices:
      raise ValueError(f'batch of {x.shape[0]} does not split across {num_devices} devices')
    return x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])
  return jax.tree.map(split, batch)


def example_normal(rng, local_batch, shape, axis_name=None):
  """Standard normal noise of shape (local_batch, *shape), one key per *global* example.

  The key of example i of the global batch is fold_in(rng, i), so an 8-device run draws
  exactly the noise a 1-device run draws for the same global batch.
  """
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(offset + jnp.arange(local_batch))
  return jax.vmap(lambda k: jax.random.normal(k, shape))(keys)


def mean_over_devices(tree, axis_name):
  """lax.pmean when data-parallel, the identity on one device."""
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def unreplicate(tree):
  """The first device's copy of a replicated pytree, on the host."""
  return jax.tree.map(lambda x: np.asarray(x[0]), tree)
