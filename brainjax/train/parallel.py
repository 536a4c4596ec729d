"""Data parallelism: which devices (of which hosts) a run uses, which host writes its files,
one device's copy of a replicated state, and per-example randomness that does not depend on
how the global batch is split."""
import collections
import hashlib
import itertools
from typing import Dict

import jax
from jax.experimental import multihost_utils
import numpy as np

from brainjax.models import layers

AXIS = 'batch'  # the pmap axis name; BatchNorm statistics and gradients are averaged over it


def train_devices(num_devices):
  """The devices a run trains on: the first `num_devices` local devices (-1: all) of every process.

  Listed process by process, the same list on every host (pmap needs that), so each host's
  devices take one contiguous block of the global batch (`host_rows`).
  Raises if more are asked than a process has.
  """
  local = jax.local_device_count()
  if num_devices == -1:
    num_devices = local
  if not 1 <= num_devices <= local:
    counts = '1' if local == 1 else f'1 to {local}'
    raise ValueError(f'num_devices={num_devices}: this process has {local} local device'
                     f'{"s" * (local > 1)}; choose -1 (all) or {counts}')
  by_process = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return [d for _, group in itertools.groupby(by_process, key=lambda d: d.process_index)
          for d in list(group)[:num_devices]]


def fitting_device_counts(*batch_sizes):
  """The num_devices values (each host's devices) that split every batch size evenly."""
  hosts = jax.process_count()
  return [n for n in range(1, jax.local_device_count() + 1)
          if all(b % (n * hosts) == 0 for b in batch_sizes)]


def check_batch_split(config, prefix='', shared_with=()):
  """A ValueError unless config.batch_size splits evenly across the devices the run trains on.

  shared_with: the batch sizes of runs that take the same num_devices (a study's other
  stages): the num_devices advised splits them too.
  """
  count = len(train_devices(config.num_devices))
  if config.batch_size % count:
    raise ValueError(f'{prefix}batch_size={config.batch_size} does not split across {count} '
                     f'devices: set num_devices to one of '
                     f'{fitting_device_counts(config.batch_size, *shared_with)} (or, in a new '
                     f'workdir, {prefix}batch_size to a multiple of {count})')


def this_host(devices):
  """This process's devices among `devices`."""
  return [d for d in devices if d.process_index == jax.process_index()]


def host_rows(batch, devices):
  """This process's rows of a global batch split evenly across `devices` in their order."""
  mine = this_host(devices)
  first = devices.index(mine[0])
  def rows(x):
    per_device = x.shape[0] // len(devices)
    return x[first * per_device:(first + len(mine)) * per_device]
  return jax.tree.map(rows, batch)


def is_first_host():
  """Whether this process writes a run's files (besides its share of each checkpoint).

  Every host of a multi-host run computes the same results from the same replicated state;
  the first writes them, so hosts sharing a workdir never write one file at once.
  """
  return jax.process_index() == 0


def check_all_hosts_agree(refused):
  """Every host says whether it refused a step all take (its own error is its to raise); a
  ValueError on the others if one did: they stop with it, instead of waiting in their next
  collective for a host that has left (a Gloo timeout's traceback, half a minute later)."""
  if jax.process_count() == 1:
    return
  refusing = np.flatnonzero(multihost_utils.process_allgather(np.int32(refused)))
  if not refused and refusing.size:
    raise ValueError(f'host {refusing[0]} refused the run; its log says why')


def check_device_counts():
  """A ValueError unless every host has as many local devices: the hosts' collectives assume it
  (otherwise a reshape error on one host, a traceback on another). From the global device list
  every host holds, so every host refuses alike, before any collective."""
  counts = collections.Counter(d.process_index for d in jax.devices())
  if len(set(counts.values())) > 1:
    raise ValueError('the hosts have different numbers of devices (' + ', '.join(
        f'host {p}: {n}' for p, n in sorted(counts.items())) + '); give each as many')


def _digest(text: str) -> np.ndarray:
  """(1,) int32 of text's hash (what process_allgather keeps without 64-bit mode)."""
  return np.frombuffer(hashlib.sha256(text.encode()).digest()[:4], np.int32)


def check_same_settings(settings: Dict[str, str]):
  """A ValueError on every host, naming the fields, unless all run with the same settings
  ({field: value as text}): with another num_devices, seed or batch_size each host trained its
  own device list or model until a collective timed out."""
  if jax.process_count() == 1:
    return
  names = sorted(settings)
  fields = np.asarray(multihost_utils.process_allgather(_digest('\n'.join(names)))).reshape(-1)
  if (fields != fields[0]).any():
    raise ValueError(f'host {np.flatnonzero(fields != fields[0])[0]} runs another config than '
                     'host 0: run the same command on every host')
  values = np.asarray(multihost_utils.process_allgather(
      np.concatenate([_digest(settings[name]) for name in names]))).reshape(len(fields), -1)
  other = values != values[0]
  if other.any():
    raise ValueError(f'host {np.flatnonzero(other.any(axis=1))[0]} runs with other settings than '
                     f'host 0 ({", ".join(names[i] for i in np.flatnonzero(other.any(axis=0)))}): '
                     'run the same command on every host')


def wait_for_all_hosts(name):
  """A barrier across hosts (nothing on one): what the first host wrote before it, all can read."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


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
  keys = layers.example_keys(rng, local_batch, axis_name)
  return jax.vmap(lambda k: jax.random.normal(k, shape))(keys)


def mean_over_devices(tree, axis_name):
  """lax.pmean when data-parallel, the identity on one device."""
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


@jax.jit
def _first_rows(tree):
  return jax.tree.map(lambda x: x[0], tree)


def first_replica(tree):
  """This host's first device's copy of a pmap-replicated pytree, left on that device.

  From the host's own shard: indexing the global array instead (x[0]) would gather a
  replica onto every device.
  """
  return _first_rows(jax.tree.map(lambda x: x.addressable_shards[0].data, tree))
