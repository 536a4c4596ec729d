"""compile_options: on CPU the train step and the forward passes leave convolutions to Eigen."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax.anomaly import recon_error
from brainjax.train import compile_options
from brainjax.train import loop

_NHWC = ('NHWC', 'HWIO', 'NHWC')
# compile_options.jit compiles for the default backend: the tests that use it check the CPU's.
on_cpu = pytest.mark.skipif(jax.default_backend() != 'cpu',
                            reason='compile_options.jit compiles for the default backend, not the CPU')


def _conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', dimension_numbers=_NHWC)


def _convolutions(hlo: str):
  """(in YNNPACK fusions, elsewhere): the convolution instructions of a compiled program."""
  called_by_ynn = set(re.findall(r'calls=(%[\w.\-]+), .*"__ynn_fusion"', hlo))
  counts = [(c.split(' ', 1)[0] in called_by_ynn, c.count(' convolution('))
            for c in re.split(r'\n(?=%|ENTRY )', hlo)]  # one computation each
  in_ynn = sum(n for ynn, n in counts if ynn)
  return in_ynn, sum(n for _, n in counts) - in_ynn


def _cpu_args(*shapes):
  cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  return [jax.ShapeDtypeStruct(s, jnp.float32, sharding=cpu) for s in shapes]


def test_options_are_for_cpu_only():
  for options in (compile_options.EIGEN_CONVOLUTIONS, compile_options.QUICK_COMPILE,
                  compile_options.LIGHT_OPTIMIZATION):
    assert compile_options.for_platform('gpu', options) is None
    assert compile_options.for_platform('tpu', options) is None
  assert compile_options.for_platform('cpu') == {
      'xla_cpu_experimental_ynn_fusion_type':
      'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
  quick = compile_options.for_platform('cpu', compile_options.QUICK_COMPILE)
  if jax.__version_info__ < (0, 11):
    assert quick == compile_options.QUICK_COMPILE
  elif jax.__version_info__ >= (0, 11, 2):  # its XLA:CPU has no older fusion emitters left
    assert quick is None


@on_cpu
def test_init_variables_light_optimization_same_values(monkeypatch):
  from brainjax import models  # pylint: disable=g-import-not-at-top
  from brainjax.train import state  # pylint: disable=g-import-not-at-top
  model = models.get_model('cnn', conv_widths=(4, 8), dense_widths=(8,))
  images = jnp.zeros((1, 32, 32, 1))
  rng = jax.random.PRNGKey(3)
  requested = []
  for_platform = compile_options.for_platform
  monkeypatch.setattr(compile_options, 'for_platform',
                      lambda platform, options: requested.append(options) or for_platform(
                          platform, options))
  ours = state.init_variables(model, rng, images)
  assert requested == [compile_options.LIGHT_OPTIMIZATION]
  default = jax.jit(lambda r: model.init(r, images, train=False))(rng)
  assert jax.tree.structure(ours) == jax.tree.structure(default)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(default)):
    np.testing.assert_array_equal(a, b)
  # Inside another trace, it is a plain nested jit, whether or not its arguments are traced.
  for traced in (jax.eval_shape(lambda r: state.init_variables(model, r, images), rng),
                 jax.eval_shape(lambda: state.init_variables(model, rng, images))):
    assert jax.tree.structure(traced) == jax.tree.structure(default)


def test_train_step_convolutions_leave_ynnpack():
  def train_step(kernel, images, rng, axis_name):
    del rng, axis_name
    loss, grad = jax.value_and_grad(lambda k: jnp.mean(_conv(images, k) ** 2))(kernel)
    return kernel - 0.1 * grad, {'loss': loss}

  args = _cpu_args((3, 3, 32, 32), (8, 16, 16, 32)) + [jax.random.PRNGKey(0)]
  ours = loop.compile_step(train_step, jax.devices('cpu')[:1]).lower(*args).compile().as_text()
  default = jax.jit(train_step, static_argnums=3).lower(*args, None).compile().as_text()
  assert _convolutions(default)[0] >= 1  # XLA's default: YNNPACK's
  in_ynn, elsewhere = _convolutions(ours)
  assert in_ynn == 0 and elsewhere >= 1


@on_cpu
def test_jit_compiles_once_with_the_options_and_the_same_values():
  traces = []

  @compile_options.jit(static_argnames='scale')
  def forward(x, kernel, scale):
    traces.append(1)
    return scale * _conv(x, kernel)

  x, k = jnp.full((8, 16, 16, 32), 0.5), jnp.full((3, 3, 32, 32), 0.01)
  np.testing.assert_allclose(forward(x, k, scale=2.0), 2.0 * _conv(x, k), rtol=1e-6)
  forward(x + 1, k, scale=2.0)
  assert len(traces) == 1 and forward.__wrapped__(x, k, 2.0).shape == (8, 16, 16, 32)
  default = jax.jit(forward.__wrapped__, static_argnames='scale').lower(x, k, scale=2.0)
  assert _convolutions(default.compile().as_text())[0] >= 1
  in_ynn, elsewhere = _convolutions(forward.lower(x, k, scale=2.0).compile().as_text())
  assert in_ynn == 0 and elsewhere >= 1


@on_cpu
def test_vae_sampler_light_optimization_same_samples_convolutions_in_eigen():
  from brainjax import models  # pylint: disable=g-import-not-at-top
  from brainjax.tasks import vae_gen  # pylint: disable=g-import-not-at-top
  model = models.get_model('vae', latent_dim=4, encoder_widths=(4, 4), decoder_widths=(4, 4),
                           image_size=32)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)), jnp.zeros((1, 4)),
                         train=False)
  rng = jax.random.PRNGKey(1)
  assert vae_gen.sample_images.cpu_options == compile_options.EIGEN_CONVOLUTIONS_LIGHT
  ours = vae_gen.sample_images.lower(model, variables, rng, 8).compile().as_text()
  assert _convolutions(ours)[0] == 0
  default = jax.jit(vae_gen.sample_images.__wrapped__, static_argnames=('model', 'num'),
                    compiler_options=compile_options.EIGEN_CONVOLUTIONS)
  np.testing.assert_array_equal(vae_gen.sample_images(model, variables, rng, 8),
                                default(model, variables, rng, 8))


@on_cpu
def test_reconstruction_error_convolutions_leave_ynnpack():
  def reconstruct(variables, x):
    return _conv(jax.nn.relu(_conv(x, variables['k1'])), variables['k2'])

  variables = {'k1': jnp.full((3, 3, 1, 32), 0.1), 'k2': jnp.full((3, 3, 32, 1), 0.01)}
  (images,) = _cpu_args((4, 16, 16, 1))
  batch_args = (reconstruct, variables, images, None, 1)
  batch_errors = recon_error._batch_errors  # pylint: disable=protected-access
  default = jax.jit(batch_errors.__wrapped__, static_argnums=(0, 4)).lower(*batch_args)
  assert _convolutions(default.compile().as_text())[0] >= 1
  in_ynn, elsewhere = _convolutions(batch_errors.lower(*batch_args).compile().as_text())
  assert in_ynn == 0 and elsewhere >= 1
  # and the values are still the errors of that reconstruction
  x = np.random.default_rng(0).random((4, 16, 16, 1)).astype(np.float32)
  out = recon_error.reconstruction_error(reconstruct, x, variables=variables)
  err = np.abs(x - np.asarray(reconstruct(variables, x))).reshape(4, -1)
  expected = (err - err.min(1, keepdims=True)) / np.ptp(err, axis=1, keepdims=True)
  np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize('renamed', [
    {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_RENAMED'},
    {'xla_cpu_renamed_fusion_emitters': False}])
def test_an_unknown_option_falls_back_to_xla_defaults(renamed):
  assert compile_options.for_platform('cpu', renamed) is None
  assert compile_options.for_platform('gpu', renamed) is None


@on_cpu
def test_jit_compiles_with_the_cpu_options_it_is_given(monkeypatch):
  requested = []
  for_platform = compile_options.for_platform
  monkeypatch.setattr(compile_options, 'for_platform',
                      lambda platform, options: requested.append(options) or for_platform(
                          platform, options))

  @compile_options.jit(cpu_options=compile_options.QUICK_COMPILE)
  def loop(x):
    return jax.lax.fori_loop(0, 5, lambda i, v: jnp.sin(v) * 1.5 + i, x)

  x = jnp.linspace(-2.0, 2.0, 1000)
  np.testing.assert_allclose(loop(x), jax.jit(loop.__wrapped__)(x), rtol=1e-6)
  assert requested == [compile_options.QUICK_COMPILE]
