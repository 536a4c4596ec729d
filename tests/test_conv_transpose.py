"""DFT transposed convolution against lax.conv_transpose / nn.ConvTranspose."""
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from brainjax.models.conv_transpose import DFTConvTranspose, conv_transpose_dft


@jax.jit
def lax_reference(x, kernel):
  return lax.conv_transpose(x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def rel_err(got, want):
  """Max absolute error relative to the reference's largest magnitude."""
  return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize('x_shape, kernel_shape', [
    ((2, 8, 8, 3), (9, 9, 3, 2)),      # the brief's small case
    ((2, 6, 9, 2), (5, 7, 2, 3)),      # non-square input and kernel, odd and even sizes
    ((1, 5, 4, 1), (4, 6, 1, 1)),      # even kernel, single channels
    ((1, 32, 32, 4), (33, 33, 4, 2)),  # BrainCVAE's first layer geometry, few channels
])
def test_forward_and_gradients_match_lax(x_shape, kernel_shape):
  x, kernel = random(x_shape, 0), random(kernel_shape, 1)
  want = lax_reference(x, kernel)
  got = jax.jit(conv_transpose_dft)(x, kernel)
  assert got.shape == want.shape == (x_shape[0], x_shape[1] + kernel_shape[0] - 1,
                                     x_shape[2] + kernel_shape[1] - 1, kernel_shape[3])
  assert rel_err(got, want) < 1e-4
  # A non-linear loss with a random cotangent pattern, so that every output
  # element's gradient path is exercised.
  weights = random(want.shape, 2)
  def loss(f):
    return lambda x, k: jnp.sum(jnp.sin(f(x, k)) * weights)
  want_dx, want_dk = jax.jit(jax.grad(loss(lax_reference), (0, 1)))(x, kernel)
  got_dx, got_dk = jax.jit(jax.grad(loss(conv_transpose_dft), (0, 1)))(x, kernel)
  assert rel_err(got_dx, want_dx) < 1e-4
  assert rel_err(got_dk, want_dk) < 1e-4


@pytest.mark.parametrize('x_shape, kernel_shape', [
    ((1, 32, 32, 64), (33, 33, 64, 32)),  # BrainCVAE's two transposed convolutions, whole
    ((1, 64, 64, 32), (65, 65, 32, 1)),
])
def test_the_cvae_s_own_layers_match_lax_in_values_and_gradients(x_shape, kernel_shape):
  # A linear cotangent: through sin, float32's rounding of outputs ~1e3 alone moved the
  # gradients by 1e-4 (in lax's as much as in ours).
  x, kernel = random(x_shape, 8), random(kernel_shape, 9)
  want, lax_vjp = jax.vjp(lax_reference, x, kernel)
  got, dft_vjp = jax.vjp(jax.jit(conv_transpose_dft), x, kernel)
  assert rel_err(got, want) < 1e-4
  cotangent = random(want.shape, 10)
  for got_grad, want_grad in zip(dft_vjp(cotangent), lax_vjp(cotangent)):
    assert rel_err(got_grad, want_grad) < 1e-4


def test_module_is_a_drop_in_for_flax_conv_transpose():
  x = random((2, 7, 7, 3), 3)
  flax_layer = nn.ConvTranspose(4, (5, 5), padding='VALID')
  dft_layer = DFTConvTranspose(4, 5)
  want_vars = jax.jit(flax_layer.init)(jax.random.key(0), x)
  got_vars = jax.jit(dft_layer.init)(jax.random.key(0), x)
  # Same names, shapes and initial values (same initialisers, same rng use).
  assert jax.tree.structure(got_vars) == jax.tree.structure(want_vars)
  for got, want in zip(jax.tree.leaves(got_vars), jax.tree.leaves(want_vars)):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  # Non-zero bias, so its broadcasting is checked too.
  params = jax.tree.map(lambda a: a + 0.1, want_vars)
  got = jax.jit(dft_layer.apply)(params, x)
  assert rel_err(got, jax.jit(flax_layer.apply)(params, x)) < 1e-4


def test_vmap_over_an_extra_batch_axis():
  xs, kernel = random((3, 2, 6, 6, 2), 4), random((7, 7, 2, 3), 5)
  got = jax.jit(jax.vmap(conv_transpose_dft, in_axes=(0, None)))(xs, kernel)
  for i in range(3):
    assert rel_err(got[i], lax_reference(xs[i], kernel)) < 1e-4


def test_bfloat16_input_keeps_its_dtype():
  x, kernel = random((1, 6, 6, 2), 6), random((5, 5, 2, 1), 7)
  got = jax.jit(conv_transpose_dft)(x.astype(jnp.bfloat16), kernel)
  assert got.dtype == jnp.bfloat16
  assert rel_err(got.astype(jnp.float32), lax_reference(x, kernel)) < 2e-2


def test_bad_shapes_raise_clear_errors():
  with pytest.raises(ValueError, match='kernel'):
    conv_transpose_dft(random((1, 4, 4, 3), 0), random((3, 3, 2, 1), 1))
  with pytest.raises(ValueError, match=r'\(N, H, W, I\)'):
    conv_transpose_dft(random((4, 4, 3), 0), random((3, 3, 3, 1), 1))
