"""Batching: per-epoch shuffles that a resumed run can replay, padded evaluation batches."""
import jax
import numpy as np
import pytest

from brainjax.data import pipeline
from brainjax.train import parallel


def test_train_batches_cover_each_epoch_once_and_resume_at_an_offset():
  arrays = {'x': np.arange(20), 'y': np.arange(20) * 10}
  batches = list(pipeline.train_batches(arrays, 4, seed=1, epoch=0))
  seen = np.concatenate([b['x'] for b in batches])
  assert len(batches) == 5 and sorted(seen) == list(range(20))
  assert all((b['y'] == b['x'] * 10).all() for b in batches)
  resumed = list(pipeline.train_batches(arrays, 4, seed=1, epoch=0, start=3))
  np.testing.assert_array_equal(np.concatenate([b['x'] for b in resumed]),
                                np.concatenate([b['x'] for b in batches[3:]]))
  other = np.concatenate([b['x'] for b in pipeline.train_batches(arrays, 4, seed=1, epoch=1)])
  assert not np.array_equal(seen, other)


def test_eval_batches_pad_with_zero_weight():
  batches = list(pipeline.eval_batches({'x': np.arange(10)}, 4))
  assert [b['x'].shape for b in batches] == [(4,)] * 3
  weights = np.concatenate([b['weight'] for b in batches])
  np.testing.assert_array_equal(weights, [1] * 10 + [0] * 2)
  # Every example once, in order; the padding repeats the last.
  np.testing.assert_array_equal(np.concatenate([b['x'] for b in batches]), [*range(10), 9, 9])


def test_batch_larger_than_data_is_a_clear_error():
  with pytest.raises(ValueError, match='batch_size=64 is larger than the 10'):
    list(pipeline.train_batches({'x': np.arange(10)}, 64, seed=0, epoch=0))


def test_shard_adds_a_device_axis():
  sharded = parallel.shard({'x': np.zeros((8, 3))}, 4)
  assert sharded['x'].shape == (4, 2, 3)
  with pytest.raises(ValueError, match='does not split'):
    parallel.shard({'x': np.zeros((6, 3))}, 4)


@pytest.mark.usefixtures('eight_devices')
def test_train_devices_and_one_hosts_rows():
  assert parallel.train_devices(3) == jax.devices()[:3]
  assert parallel.train_devices(-1) == jax.devices()
  message = r'num_devices=9: this process has 8 local devices; choose -1 \(all\) or 1 to 8'
  with pytest.raises(ValueError, match=message):
    parallel.train_devices(9)
  batch = {'x': np.arange(12)}  # one process holds every device: all the rows are its own
  np.testing.assert_array_equal(parallel.host_rows(batch, jax.devices()[:4])['x'], batch['x'])


@pytest.mark.usefixtures('eight_devices')
def test_first_replica_stays_on_the_first_device():
  devices = jax.devices()[:4]
  # Each device holds a different row, so the test sees which device's copy comes back.
  per_device = jax.pmap(lambda x: x + 1, devices=devices)(np.arange(8.0).reshape(4, 2))
  first = parallel.first_replica({'w': per_device})['w']
  assert first.shape == (2,) and first.devices() == {devices[0]}
  np.testing.assert_array_equal(first, [1.0, 2.0])


def test_a_batch_that_does_not_split_names_the_num_devices_that_do(monkeypatch):
  import ml_collections
  config = ml_collections.ConfigDict(dict(batch_size=12, num_devices=-1))
  # Two hosts of four devices (num_devices counts each host's): 12 splits over 2 x 1, 2, 3.
  monkeypatch.setattr(parallel, 'train_devices', lambda n: list(range(8 if n == -1 else 2 * n)))
  monkeypatch.setattr(parallel.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(parallel.jax, 'local_device_count', lambda: 4)
  with pytest.raises(ValueError, match=r'across 8 devices: set num_devices to one of \[1, 2, 3\]'):
    parallel.check_batch_split(config)
  config.num_devices = 3
  parallel.check_batch_split(config)
