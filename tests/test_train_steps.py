"""The classifiers' own train steps, as loop.fit compiles them (jit, state donated): a step
lowers the loss, and two models' states (made from one key) share nothing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax import threads
from brainjax.tasks import cnn_cls
from brainjax.tasks import cvae_cls
from brainjax.train import loop
from brainjax.train import parallel
from brainjax.train import state as state_lib
from configs import cnn_cls as cnn_config
from configs import cvae_cls as cvae_config

TASKS = {'cnn': (cnn_cls, cnn_config.get_config('real,smoke')),
         'cvae': (cvae_cls, cvae_config.get_config('real,smoke'))}


def _setup(name):
  task, config = TASKS[name]
  model = task.create_model(config)
  step = loop.compile_step(task.make_train_step(config, model), jax.devices()[:1])
  size = config.data.image_size
  images = jax.random.uniform(jax.random.PRNGKey(1), (8, size, size, 1))
  batch = {'image': images, 'label': jnp.arange(8, dtype=jnp.int32) % 2}
  return task, config, model, step, batch


def _copy(tree):
  return jax.tree.map(np.array, tree)


def test_a_step_of_each_classifier_lowers_its_loss_on_its_batch():
  for name in TASKS:
    task, config, model, step, batch = _setup(name)
    state = task.create_train_state(config, model, jax.random.PRNGKey(0))
    losses = []
    for i in range(3):
      state, metrics = step(state, batch, jax.random.PRNGKey(2))  # (the same noise each step)
      losses.append(float(metrics['loss']))
    assert losses[2] < losses[0], (name, losses)


def test_two_models_made_from_one_key_share_no_state():
  # Donation frees the stepped state's buffers: a second model whose parameters or optimizer
  # state shared a buffer with it would be left reading freed memory, or stepped along.
  for name in TASKS:
    task, config, model, step, batch = _setup(name)
    first = task.create_train_state(config, model, jax.random.PRNGKey(0))
    second = task.create_train_state(config, model, jax.random.PRNGKey(0))
    before = _copy((second.params, second.opt_state))
    for _ in range(2):
      first, _ = step(first, batch, jax.random.PRNGKey(2))
    after = _copy((second.params, second.opt_state))
    jax.tree.map(np.testing.assert_array_equal, after, before)
    assert int(second.step) == 0 and int(first.step) == 2
    stepped = _copy(first.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stepped),
                                                        jax.tree.leaves(before[0])))


@pytest.mark.usefixtures('eight_devices')
def test_brain_cnn_on_eight_devices_follows_the_one_device_loss_curve(tmp_path):
  # Same global batch of 16: gradients and BatchNorm statistics are averaged across devices
  # (unaveraged gradients let each device's replica drift apart).
  rng = np.random.default_rng(0)
  data = {'image': rng.uniform(size=(32, 128, 128, 1)).astype(np.float32),
          'label': (np.arange(32) % 2).astype(np.int32)}
  curves = {}
  for n in (1, 8):
    config = cnn_config.get_config('real,smoke')
    config.update_from_flattened_dict(dict(num_devices=n, batch_size=16, num_epochs=3,
                                           log_every_steps=1, cache_dir=str(tmp_path)))
    model = cnn_cls.create_model(config, parallel.AXIS if n > 1 else None)
    state = cnn_cls.create_train_state(config, model, jax.random.PRNGKey(0))
    _, curves[n] = loop.fit(config, str(tmp_path / f'cnn{n}'), state,
                            cnn_cls.make_train_step(config, model), data)
  for key in ('train_loss', 'train_accuracy'):
    np.testing.assert_allclose(curves[8][key], curves[1][key], rtol=1e-3, err_msg=key)


def test_check_networks_counts_the_state_in_bytes(monkeypatch):
  needed = []
  monkeypatch.setattr(threads, 'check_fits_in_memory',
                      lambda size, *args, **kwargs: needed.append(size))
  state_lib.check_networks(lambda rng: {'w': jnp.zeros((1000,), jnp.float32),
                                        'b': jnp.zeros((10,), jnp.bfloat16)})
  assert needed == [1000 * 4 + 10 * 2]


def test_a_state_larger_than_memory_in_bytes_but_not_in_elements_is_refused(monkeypatch):
  monkeypatch.setattr(threads, 'memory_bytes', lambda: 10_000)
  with pytest.raises(ValueError, match='training state that would need'):
    state_lib.check_networks(lambda rng: {'w': jnp.zeros((5000,), jnp.float32)})  # 20 kB
