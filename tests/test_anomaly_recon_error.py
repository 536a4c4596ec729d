"""reconstruction_error: batching, padding, normalisation, averaging over latent samples."""
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from brainjax.anomaly import recon_error


def _box_blur(images):
  """A stand-in 'reconstruction': 3x3 mean filter (zero padded)."""
  kernel = jnp.ones((3, 3, 1, 1), images.dtype) / 9.0
  return jax.lax.conv_general_dilated(images, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _expected(images, recons):
  err = np.abs(images - recons).reshape(len(images), -1)
  lo, hi = err.min(axis=1, keepdims=True), err.max(axis=1, keepdims=True)
  return (err - lo) / (hi - lo)


def test_matches_numpy_and_compiles_once():
  rng = np.random.default_rng(0)
  images = rng.random((10, 12, 12, 1)).astype(np.float32)
  traces = []

  def reconstruct(variables, x):
    traces.append(x.shape)  # runs once per trace
    return _box_blur(x)

  out = recon_error.reconstruction_error(reconstruct, images, variables=None, batch_size=4)
  recons = ndimage.uniform_filter(images[..., 0].astype(np.float64), size=(1, 3, 3),
                                  mode='constant')[..., None]
  assert out.dtype == np.float32 and out.shape == (10, 144)
  np.testing.assert_allclose(out, _expected(images, recons), atol=2e-5)
  assert traces == [(4, 12, 12, 1)]  # the last batch of 2 was padded, no retrace
  assert out.min(axis=1).max() == 0.0 and out.max(axis=1).min() == 1.0


def test_constant_error_is_zero():
  images = np.random.default_rng(1).random((3, 8, 8, 1)).astype(np.float32)
  out = recon_error.reconstruction_error(lambda v, x: x, images, variables=None)  # perfect
  assert np.all(out == 0)
  out = recon_error.reconstruction_error(lambda v, x: x * 0 + 0.5,
                                         np.full((2, 8, 8, 1), 0.25, np.float32), variables=None)
  assert np.all(out == 0)


@pytest.mark.parametrize('kwargs, message', [
    (dict(images=np.zeros((2, 8, 8))), r'\(N, H, W, 1\)'),
    (dict(batch_size=0), 'batch_size'),
])
def test_bad_arguments(kwargs, message):
  args = dict(images=np.zeros((2, 8, 8, 1), np.float32))
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    recon_error.reconstruction_error(lambda v, x: x, variables=None, **args)


def _powered(variables, images):
  return images ** variables['power']


def test_variables_are_an_argument_and_compilation_is_reused():
  images = np.random.default_rng(5).random((6, 8, 8, 1)).astype(np.float32)
  traces = []

  def reconstruct(variables, x):
    traces.append(1)
    return _powered(variables, x)

  a = recon_error.reconstruction_error(reconstruct, images, variables={'power': jnp.float32(2)})
  b = recon_error.reconstruction_error(reconstruct, images, variables={'power': jnp.float32(0.5)})
  np.testing.assert_allclose(a, _expected(images, images ** 2), atol=1e-5)
  np.testing.assert_allclose(b, _expected(images, np.sqrt(images)), atol=1e-5)
  assert np.abs(a - b).max() > 0.1
  assert len(traces) == 1  # new variables, same compiled function


def test_every_call_has_batch_size_images_whatever_their_number():
  traces = []

  def reconstruct(variables, x):
    traces.append(x.shape[0])
    return _box_blur(x)

  for n in (5, 7, 12, 3):
    images = np.random.default_rng(n).random((n, 8, 8, 1)).astype(np.float32)
    out = recon_error.reconstruction_error(reconstruct, images, variables=None, batch_size=8)
    recons = ndimage.uniform_filter(images[..., 0].astype(np.float64), size=(1, 3, 3),
                                    mode='constant')[..., None]
    np.testing.assert_allclose(out, _expected(images, recons), atol=2e-5)
  assert traces == [8]  # one compiled shape: 5, 7, 12 and 3 images in calls of 8


def test_a_slice_s_brain_cvae_map_does_not_depend_on_the_slices_scored_with_it():
  # XLA rounds each batch shape's program its own way: batches sized to the images (the next
  # power of two) gave predict's few slices maps ~1e-7 off those of their run's test set.
  from brainjax.tasks import cvae_cls
  from configs import cvae_cls as cvae_config
  config = cvae_config.get_config('real,smoke')
  model = cvae_cls.create_model(config)
  variables = cvae_cls.create_train_state(config, model, jax.random.PRNGKey(0)).variables
  images = np.random.default_rng(0).random((40, 128, 128, 1)).astype(np.float32)
  every = cvae_cls.error_maps(model, variables, images, config.anomaly, None)
  few = cvae_cls.error_maps(model, variables, images[[30, 2, 7]], config.anomaly, None)
  np.testing.assert_array_equal(few, every[[30, 2, 7]])


def test_a_cvae_reconstruction_compiles_once_per_network_whoever_builds_it():
  from brainjax.tasks import cvae_cls
  from configs import cvae_cls as cvae_config
  config = cvae_config.get_config('real,smoke')
  variables = cvae_cls.create_train_state(config, cvae_cls.create_model(config),
                                          jax.random.PRNGKey(0)).variables
  images = np.random.default_rng(0).random((3, 128, 128, 1)).astype(np.float32)
  first = recon_error.reconstruction_error(
      cvae_cls.Reconstruction(cvae_cls.create_model(config)), images, variables=variables)
  lowerings = []

  def count_lowerings(event, duration, **kwargs):
    if event == '/jax/core/compile/jaxpr_to_mlir_module_duration':
      lowerings.append(duration)

  jax.monitoring.register_event_duration_secs_listener(count_lowerings)
  try:  # another, equal model's (as every predict call builds one)
    again = recon_error.reconstruction_error(
        cvae_cls.Reconstruction(cvae_cls.create_model(config)), images, variables=variables)
    assert not lowerings
    jax.jit(lambda x: x * 3.0)(images)  # (what a lowering does count)
  finally:
    jax.monitoring.unregister_event_duration_listener(count_lowerings)
  np.testing.assert_array_equal(again, first)
  assert len(lowerings) == 1


def test_stochastic_mode_averages_each_image_s_samples_before_normalising():
  images = np.random.default_rng(2).random((5, 6, 6, 1)).astype(np.float32)
  rng = jax.random.PRNGKey(3)

  def noisy(variables, x, keys):  # one draw per image and call
    return x + variables * jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(keys)

  out = recon_error.reconstruction_error(noisy, images, variables=jnp.float32(1.0),
                                         num_samples=4, rng=rng, batch_size=2)
  expected = []
  for i in range(5):  # image i's keys: fold_in(fold_in(rng, crc32 of its pixels), sample)
    key = jax.random.fold_in(rng, zlib.crc32(images[i].tobytes()))
    total = sum(np.abs(np.asarray(jax.random.normal(jax.random.fold_in(key, s), (6, 6, 1))))
                for s in range(4))
    row = (total / 4).reshape(-1)
    expected.append((row - row.min()) / (row.max() - row.min()))
  np.testing.assert_allclose(out, np.stack(expected), rtol=1e-5, atol=1e-6)
  # An image's map does not depend on the batch it falls in, nor on its place among the images.
  again = recon_error.reconstruction_error(noisy, images, variables=jnp.float32(1.0),
                                           num_samples=4, rng=rng, batch_size=5)
  np.testing.assert_allclose(again, out, rtol=1e-6)
  order = [3, 0, 4]
  moved = recon_error.reconstruction_error(noisy, images[order], variables=jnp.float32(1.0),
                                           num_samples=4, rng=rng, batch_size=2)
  np.testing.assert_allclose(moved, out[order], rtol=1e-6)
  with pytest.raises(ValueError, match='num_samples=2: it must be 1, or more with an rng'):
    recon_error.reconstruction_error(noisy, images, variables=1.0, num_samples=2)


def test_brain_cvae_maps_averaged_over_latent_samples_are_normalised_errors():
  # (XLA fused the average into the normalisation and rounded it otherwise than its min and
  # max: -6e-12 and 1.0000001, which the rules refuse.)
  from brainjax.tasks import cvae_cls  # pylint: disable=g-import-not-at-top
  from configs import cvae_cls as cvae_config  # pylint: disable=g-import-not-at-top
  config = cvae_config.get_config('real,smoke')
  model = cvae_cls.create_model(config)
  variables = cvae_cls.create_train_state(config, model, jax.random.PRNGKey(0)).variables
  size = config.data.image_size
  images = np.random.default_rng(0).random((6, size, size, 1)).astype(np.float32)
  config.anomaly.num_latent_samples = 3
  maps = cvae_cls.error_maps(model, variables, images, config.anomaly, jax.random.PRNGKey(1))
  assert maps.shape == (6, size * size) and maps.min() == 0.0 and maps.max() == 1.0
  config.anomaly.num_latent_samples = 1
  mean_maps = cvae_cls.error_maps(model, variables, images, config.anomaly, None)
  assert not np.allclose(maps, mean_maps)


def test_a_latent_sample_is_the_mean_plus_the_standard_deviation_times_noise():
  from brainjax.models.cvae import BrainCVAE
  from brainjax.tasks import cvae_cls
  model = BrainCVAE(latent_dim=4, conv_widths=(2, 3), image_size=32)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 1))
  variables = model.init(jax.random.PRNGKey(0), x, jnp.zeros((2, 4)))
  params = jax.tree.map(lambda v: v, variables['params'])
  params['encoder']['logvar']['bias'] = params['encoder']['logvar']['bias'] - 2.0  # std 0.37
  variables = {**variables, 'params': params}
  keys = jax.random.split(jax.random.PRNGKey(5), 2)
  mean, logvar = model.apply(variables, x, method=model.encode)
  noise = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(keys)
  want = model.apply(variables, mean + jnp.exp(logvar / 2) * noise, method=model.decode)
  np.testing.assert_allclose(cvae_cls.Reconstruction(model)(variables, x, keys), want, atol=1e-6)
