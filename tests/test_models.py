"""The four networks at 128x128 with tiny widths: shapes, ranges, modes, one training step."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax
import pytest

from brainjax.models import BrainCNN, BrainCVAE, Discriminator, Generator, VAE, get_model
from brainjax.models.cnn import max_pool_2x2
from brainjax.models.conv_gradients import (NHWC, _block_input_gradient, _concat_channels,
                                            _gemm_conv_grads, conv_general_dilated,
                                            explicit_padding)
from brainjax.models.layers import TORCH_PAD1, BatchNorm, UpsampleConv, normalize_batch

SIZE = 128
nhwc_conv = functools.partial(conv_general_dilated, dimension_numbers=NHWC)
TINY_VAE = dict(latent_dim=8, encoder_widths=(4, 4, 8, 8, 8, 8), decoder_widths=(8, 8, 8, 8, 4, 4))
TINY_GENERATOR = dict(latent_dim=8, widths=(8, 8, 4, 4))
TINY_DISCRIMINATOR = dict(widths=(4, 4, 8, 8))
TINY_CNN = dict(conv_widths=(4, 4, 8), dense_widths=(16, 16, 8))
TINY_CVAE = dict(latent_dim=8, conv_widths=(4, 4))


def key(seed):
  # 'rbg' keys: XLA:CPU compiles their generator far faster than threefry's
  # (model inits compile in seconds instead of tens of seconds).
  return jax.random.key(seed, impl='rbg')


def images(n=4, seed=0, size=SIZE):
  return jax.random.uniform(key(seed), (n, size, size, 1))


def normal(shape, seed):
  return jax.random.normal(key(seed), shape)


def tree_equal(a, b):
  return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def rel_err(got, want):
  return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def test_get_model_builds_every_network_and_rejects_unknown_names():
  assert isinstance(get_model('vae', latent_dim=3), VAE)
  assert get_model('vae', latent_dim=3).latent_dim == 3
  for name, cls in [('generator', Generator), ('discriminator', Discriminator), ('cnn', BrainCNN),
                    ('cvae', BrainCVAE)]:
    assert isinstance(get_model(name), cls)
  with pytest.raises(ValueError, match='cnn, cvae, discriminator, generator, vae'):
    get_model('resnet')


def test_vae_shapes_ranges_and_train_mode_batch_norm():
  model = VAE(**TINY_VAE)
  x, noise = images(), normal((4, 8), 1)
  (eval_logits, mean, logvar), variables = jax.jit(model.init_with_output, static_argnames='train')(
      key(0), x, noise, train=False)
  assert eval_logits.shape == (4, SIZE, SIZE, 1) and mean.shape == logvar.shape == (4, 8)
  assert eval_logits.dtype == mean.dtype == jnp.float32

  # Arrays go in as arguments: closed-over arrays become constants that XLA
  # would constant-fold at compile time (slow).
  @jax.jit
  def run(variables, x, noise, z):
    train = model.apply(variables, x, noise, train=True, mutable=['batch_stats'])
    return train, jax.nn.sigmoid(model.apply(variables, z, train=False, method='decode'))

  z = mean + jnp.exp(0.5 * logvar) * noise
  ((logits, _, _), train_state), image = run(variables, x, noise, z)
  assert logits.shape == (4, SIZE, SIZE, 1)
  # Train mode normalises with batch statistics and moves the running ones.
  assert not tree_equal(train_state['batch_stats'], variables['batch_stats'])
  assert not np.allclose(logits, eval_logits)
  # The reconstruction decodes z = mean + exp(logvar / 2) * noise; its sigmoid is
  # in [0, 1].
  assert image.shape == (4, SIZE, SIZE, 1) and 0 <= float(image.min()) and float(image.max()) <= 1
  np.testing.assert_allclose(image, jax.nn.sigmoid(eval_logits), atol=1e-5)


def test_generator_and_discriminator_shapes_and_ranges():
  generator, discriminator = Generator(**TINY_GENERATOR), Discriminator(**TINY_DISCRIMINATOR)
  z = 3 * normal((4, 8), 0)
  fake, g_vars = jax.jit(generator.init_with_output, static_argnames='train')(key(0), z, train=False)
  assert fake.shape == (4, SIZE, SIZE, 1)
  assert -1 <= float(fake.min()) < float(fake.max()) <= 1
  # Layout of the peer: dense 8x8 map, 3 blocks (16, 32, 64 px), last upsample+conv.
  assert g_vars['params']['Dense_0']['kernel'].shape == (8, 8 * 8 * 8)
  assert g_vars['params']['UpsampleConvBlock_2']['Conv_0']['kernel'].shape == (3, 3, 4, 4)
  assert g_vars['params']['UpsampleConv_0']['kernel'].shape == (3, 3, 4, 1)

  logits, d_vars = jax.jit(discriminator.init_with_output)(key(1), fake)
  assert set(d_vars) == {'params'}  # no BatchNorm in D
  assert logits.shape == (4,) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # 4x4 stride-2 convs with padding 1: 128 -> 8 px before the dense logit.
  assert d_vars['params']['Dense_0']['kernel'].shape == (8 * 8 * 8, 1)


def test_cnn_dropout_only_in_train_mode_and_features():
  model = BrainCNN(**TINY_CNN)
  x = images()
  variables = jax.jit(model.init, static_argnames='train')(key(0), x, train=False)
  apply_train = jax.jit(lambda v, x, rng: model.apply(v, x, train=True, rngs={'dropout': rng},
                                                      mutable=['batch_stats'])[0])
  train_logits = lambda seed: apply_train(variables, x, key(seed))

  @jax.jit
  def evaluate(variables, x, rng):
    return (model.apply(variables, x, train=False), model.apply(variables, x, train=False, rngs={'dropout': rng}),
            model.apply(variables, x, method='features'))

  logits = train_logits(1)
  assert logits.shape == (4, 2) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, train_logits(1))
  assert not np.allclose(logits, train_logits(2))
  # Eval needs no dropout rng and ignores one.
  eval_logits, eval_logits_with_rng, features = evaluate(variables, x, key(3))
  np.testing.assert_array_equal(eval_logits, eval_logits_with_rng)
  assert not np.allclose(eval_logits, logits)
  assert features.shape == (4, 8) and float(features.min()) >= 0  # after ReLU
  dense = variables['params']['Dense_3']
  np.testing.assert_allclose(features @ dense['kernel'] + dense['bias'][None], eval_logits, atol=1e-5)


def test_cvae_shapes_range_kernel_sizes_and_reconstruct():
  model = BrainCVAE(**TINY_CVAE)
  x, noise = images(), normal((4, 8), 1)
  variables = jax.jit(model.init)(key(0), x, noise)
  decoder = variables['params']['decoder']
  assert decoder['ConvTranspose_0']['kernel'].shape == (33, 33, 4, 4)
  assert decoder['ConvTranspose_1']['kernel'].shape == (65, 65, 4, 1)

  @jax.jit
  def run(variables, x, noise):
    recon, mean, logvar = model.apply(variables, x, noise)
    return (recon, mean, logvar, model.apply(variables, x, method='reconstruct'),
            model.apply(variables, mean, method='decode'))

  recon, mean, logvar, rebuilt, decoded_mean = run(variables, x, noise)
  assert recon.shape == (4, SIZE, SIZE, 1) and mean.shape == logvar.shape == (4, 8)
  assert 0 <= float(recon.min()) and float(recon.max()) <= 1
  np.testing.assert_allclose(rebuilt, decoded_mean, atol=1e-6)  # reconstruct uses z = mean
  assert not np.allclose(recon, rebuilt)                        # __call__ samples
  # Kernel sizes follow the image size: S/4 + 1 and S/2 + 1.
  small = BrainCVAE(latent_dim=4, conv_widths=(2, 3), image_size=32)
  small_x = images(2, size=32)
  rebuilt, small_vars = jax.jit(lambda k, x: small.init_with_output(k, x, method='reconstruct'))(key(0), small_x)
  shapes = jax.tree.map(lambda a: a.shape, small_vars['params']['decoder'])
  assert shapes['ConvTranspose_0']['kernel'] == (9, 9, 3, 2)
  assert shapes['ConvTranspose_1']['kernel'] == (17, 17, 2, 1)
  assert rebuilt.shape == (2, 32, 32, 1)


def test_initialisation_is_determined_by_the_rng():
  model = Generator(latent_dim=4, widths=(4, 4), image_size=32)
  init = jax.jit(model.init, static_argnames='train')
  z = jnp.zeros((2, 4))
  first, again, other = (init(key(k), z, train=False) for k in (0, 0, 1))
  assert tree_equal(first, again)
  assert not tree_equal(first['params'], other['params'])
  # The default (threefry) keys work too (traced only: their init is slow to compile).
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), z, train=False))
  assert jax.tree.structure(shapes) == jax.tree.structure(first)


def test_one_adam_step_decreases_vae_and_cnn_losses():
  # Shallow variants at 8 px: the wiring of a training step, cheap to compile.
  x = images(4, size=8)
  vae, noise = VAE(latent_dim=4, encoder_widths=(4, 4), decoder_widths=(4, 4), image_size=8), normal((4, 4), 1)
  vae_vars = jax.jit(vae.init, static_argnames='train')(key(0), x, noise, train=False)

  def vae_loss(params, batch_stats, x, noise):
    (logits, mean, logvar), _ = vae.apply({'params': params, 'batch_stats': batch_stats},
                                          x, noise, train=True, mutable=['batch_stats'])
    bce = optax.sigmoid_binary_cross_entropy(logits, x).sum() / 4
    kl = -0.5 * jnp.sum(1 + logvar - mean ** 2 - jnp.exp(logvar)) / 4
    return bce + kl

  cnn = BrainCNN(conv_widths=(4, 4), dense_widths=(8, 4))
  cnn_vars = jax.jit(cnn.init, static_argnames='train')(key(0), x, train=False)

  def cnn_loss(params, batch_stats, x, rng):
    logits, _ = cnn.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                          rngs={'dropout': rng}, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(4) % 2).mean()

  optimizer = optax.adam(1e-3)
  for loss_fn, variables, data in [(vae_loss, vae_vars, (x, noise)), (cnn_loss, cnn_vars, (x, key(5)))]:

    @jax.jit
    def step(params, batch_stats, data):
      loss, grads = jax.value_and_grad(loss_fn)(params, batch_stats, *data)
      updates, _ = optimizer.update(grads, optimizer.init(params), params)
      return loss, optax.apply_updates(params, updates)

    before, new_params = step(variables['params'], variables['batch_stats'], data)
    after, _ = step(new_params, variables['batch_stats'], data)
    assert float(after) < float(before)


def test_batch_norm_modes_and_statistics_shared_across_devices_with_axis_name():
  # vmap with an axis name stands in for pmap: two shards of two latents must
  # behave like one batch of four (pmean'd BatchNorm statistics).
  tiny = dict(latent_dim=4, widths=(4, 4), image_size=32)
  z = normal((4, 4), 0)
  single, sharded = Generator(**tiny), Generator(**tiny, axis_name='devices')
  variables = jax.jit(single.init, static_argnames='train')(key(0), z, train=False)

  @jax.jit
  def run(variables, z):
    want = single.apply(variables, z, train=True, mutable=['batch_stats'])
    got = jax.vmap(lambda zs: sharded.apply(variables, zs, train=True, mutable=['batch_stats']),
                   axis_name='devices')(z.reshape(2, 2, 4))
    return want, got, single.apply(variables, z, train=False, mutable=['batch_stats'])[1]

  (want, want_state), (got, got_state), eval_state = run(variables, z)
  # Eval mode leaves the running statistics alone, train mode moves them.
  assert tree_equal(eval_state, {'batch_stats': variables['batch_stats']})
  assert not tree_equal(want_state, eval_state)
  np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-5)
  for got_leaf, want_leaf in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
    np.testing.assert_allclose(got_leaf[0], want_leaf, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got_leaf[0], got_leaf[1])


def bn_inputs(seed, dtype=jnp.float32):
  """(8, 5, 6, 4) values with a channel of zeros (variance 0: rstd is 1/sqrt(eps) there)."""
  spread, offset = jnp.array([3.0, 0.5, 1.0, 0.0]), jnp.array([1.0, -2.0, 3.0, 0.0])
  x = normal((8, 5, 6, 4), seed) * spread[None, None, None] + offset[None, None, None]
  return x.astype(dtype)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('train', [True, False])
def test_batch_norm_matches_flax_values_statistics_and_gradients(dtype, train):
  x, weights = bn_inputs(0, dtype), normal((8, 5, 6, 4), 1)
  want_model = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
  got_model = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
  variables = want_model.init(key(2), x)
  assert jax.tree.map(jnp.shape, got_model.init(key(2), x)) == jax.tree.map(jnp.shape, variables)
  variables = jax.tree.map(lambda v: v + jax.random.uniform(key(3), v.shape), variables)

  @jax.jit
  def run(params, x):
    def loss(params, x, model):
      y, stats = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                             mutable=['batch_stats'])
      return jnp.sum(jnp.tanh(y.astype(jnp.float32)) * weights), (y, stats)
    return [jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x, model)
            for model in (want_model, got_model)]

  (want_grads, (want_y, want_stats)), (got_grads, (got_y, got_stats)) = run(variables['params'], x)
  assert got_y.dtype == want_y.dtype == dtype
  tolerance = 1e-5 if dtype == jnp.float32 else 1e-2
  assert rel_err(got_y.astype(jnp.float32), want_y.astype(jnp.float32)) < tolerance
  for got, want in zip(jax.tree.leaves((got_stats, got_grads)),
                       jax.tree.leaves((want_stats, want_grads))):
    assert got.dtype == want.dtype
    assert rel_err(got.astype(jnp.float32), want.astype(jnp.float32)) < tolerance


def test_normalize_batch_gradients_match_autodiff_across_devices():
  # Autodiff of flax's formulas on the whole batch against the written-out backward pass,
  # on the whole batch and on two shards (vmap's axis stands in for pmap's), for a loss
  # of y, mean and var: the shards' losses add up to the whole batch's, so each shard's
  # dx is its part of the whole batch's and the parameters' gradients add up.
  x, scale, bias = bn_inputs(0), normal((4,), 1), normal((4,), 2)
  weights, w_mean, w_var = normal(x.shape, 3), normal((4,), 4), normal((4,), 5)

  def reference(x, scale, bias, axis_name):
    del axis_name
    mean, mean_sq = x.mean((0, 1, 2)), (x * x).mean((0, 1, 2))
    var = jnp.maximum(0.0, mean_sq - mean * mean)
    a = lax.rsqrt(var + 1e-5) * scale
    return (x - mean[None, None, None]) * a[None, None, None] + bias[None, None, None], mean, var

  def loss(normalize, shards, x, scale, bias, weights):
    y, mean, var = normalize(x, scale, bias, 'shards' if shards > 1 else None)
    return jnp.sum(jnp.tanh(y) * weights) + jnp.sum(w_mean * mean + w_var * var) / shards

  def grads(normalize, shards):
    return jax.grad(functools.partial(loss, normalize, shards), argnums=(0, 1, 2))

  fast = lambda x, scale, bias, axis_name: normalize_batch(x, scale, bias, 1e-5, axis_name)
  want = jax.jit(grads(reference, 1))(x, scale, bias, weights)
  whole = jax.jit(grads(fast, 1))(x, scale, bias, weights)
  shards = jax.jit(jax.vmap(grads(fast, 2), in_axes=(0, None, None, 0), axis_name='shards'))(
      x.reshape(2, 4, 5, 6, 4), scale, bias, weights.reshape(2, 4, 5, 6, 4))
  for got in whole, (shards[0].reshape(x.shape), shards[1].sum(0), shards[2].sum(0)):
    for g, w in zip(got, want):
      assert rel_err(g, w) < 1e-5


def test_bfloat16_computation_keeps_float32_params():
  model = Generator(latent_dim=4, widths=(4, 4), image_size=32, dtype=jnp.bfloat16)
  fake, variables = jax.jit(model.init_with_output, static_argnames='train')(key(0), normal((2, 4), 0),
                                                                             train=False)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  assert fake.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(fake)))
  # Computed in bfloat16: not the float32 network's values, but within its rounding of them.
  full = Generator(latent_dim=4, widths=(4, 4), image_size=32).apply(variables, normal((2, 4), 0),
                                                                     train=False)
  assert not np.array_equal(fake, full)
  np.testing.assert_allclose(fake, full, atol=0.05)


def test_bad_inputs_raise_clear_errors():
  vae = VAE(**TINY_VAE)
  with pytest.raises(ValueError, match=r'expected images \(N, 128, 128, 1\)'):
    vae.init(key(0), images(2, size=64), jnp.zeros((2, 8)), train=False)
  with pytest.raises(ValueError, match='noise must have shape'):
    jax.eval_shape(lambda: vae.init(key(0), images(2), jnp.zeros((2, 5)), train=False))
  with pytest.raises(ValueError, match='not a multiple'):
    jax.eval_shape(lambda: Generator(**TINY_GENERATOR, image_size=100).init(
        key(0), jnp.zeros((1, 8)), train=False))
  with pytest.raises(ValueError, match='BrainCNN'):
    BrainCNN(**TINY_CNN).init(key(0), jnp.zeros((1, 32, 32, 3)), train=False)


def test_concat_channels_equals_concatenate():
  parts = [normal((2, 3, 4, 5), seed) for seed in range(4)]
  np.testing.assert_array_equal(_concat_channels(parts), jnp.concatenate(parts, axis=-1))


@pytest.mark.parametrize('kernel, strides, padding, features', [
    (4, 2, TORCH_PAD1, 5),          # strided col2im and blocks, space-to-depth kernel gradient
    (4, 2, ((2, 1), (0, 3)), 5),    # the same where the blocks leave rows and columns out
    (2, 2, TORCH_PAD1, 5),          # one block per window
    (3, 2, TORCH_PAD1, 5),          # stride not dividing the kernel: strided patches, 4x4 blocks
    (2, 1, ((1, 0), (0, 1)), 5),    # stride-1 col2im input gradient (UpsampleConv's 2x2)
    (3, 1, 'SAME', 5),              # stride-1 3x3
    (3, 1, ((2, 0), (1, 1)), 1)])   # fewer outputs than inputs: shifted copies of dy
def test_fast_conv_matches_lax_values_and_gradients(kernel, strides, padding, features):
  x = normal((2, 10, 8, 3), 0)
  k = normal((kernel, kernel, 3, features), 1)
  lax_conv = lambda x, k, s, p: lax.conv_general_dilated(x, k, s, p,
                                                         dimension_numbers=NHWC)

  def run(conv):
    f = lambda x, k: jnp.sum(jnp.sin(conv(x, k, (strides, strides), padding)))
    return jax.jit(jax.value_and_grad(f, (0, 1)))(x, k)

  (want, want_grads), (got, got_grads) = run(lax_conv), run(nhwc_conv)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # the GEMMs themselves, whichever gradients the CPU takes from them for this conv
  pads = explicit_padding(x.shape, k.shape, (strides, strides), padding)
  dy = jnp.cos(lax_conv(x, k, (strides, strides), padding))
  gemm_grads = jax.jit(_gemm_conv_grads, static_argnums=(0, 1, 2))(
      (strides, strides), pads, None, x, k, dy)
  for g, w in zip(list(got_grads) + list(gemm_grads), list(want_grads) * 2):
    assert rel_err(g, w) < 1e-5
  if strides > 1:  # the input gradient on pixel blocks, whichever the CPU takes for this conv
    block_dx, _ = jax.jit(_block_input_gradient, static_argnums=(0, 1, 2))(
        (strides, strides), pads, None, x, k, dy)
    assert rel_err(block_dx, want_grads[0]) < 1e-5



def test_fast_conv_reads_no_dimension_numbers_as_lax_does():
  # (It read them as NHWC, unlike lax: a drop-in replacement must not.)
  x, k = normal((2, 3, 10, 8), 0), normal((5, 3, 3, 3), 1)  # NCHW, OIHW
  np.testing.assert_allclose(conv_general_dilated(x, k, (1, 1), 'SAME'),
                             lax.conv_general_dilated(x, k, (1, 1), 'SAME'), rtol=1e-6)

@pytest.mark.parametrize('size, strides, pads', [
    (8, 1, ((-1, 2), (1, -1))), (8, 2, ((-1, 2), (1, -1))),  # negative padding crops the input
    (3, 2, ((0, 0), (0, 0))), (1, 3, ((1, 1), (1, 1)))])      # a kernel wider than the input
@pytest.mark.parametrize('cin', [1, 3])
def test_fast_conv_gives_lax_s_gradients_where_its_own_cannot_go(size, strides, pads, cin):
  # (Its gradients pad the input, and assume an output: they failed on both.)
  x, k = normal((2, size + 2, size, cin), 0), normal((4, 4, cin, 5), 1)

  def grads(conv):
    f = lambda x, k: jnp.sum(jnp.sin(conv(x, k, (strides, strides), pads, dimension_numbers=NHWC)))
    return jax.jit(jax.grad(f, (0, 1)))(x, k)

  for got, want in zip(grads(conv_general_dilated), grads(lax.conv_general_dilated)):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('dtype, tolerance', [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize('kernel, strides, padding', [
    (3, 1, TORCH_PAD1), (4, 2, TORCH_PAD1), (3, 2, ((2, 1), (0, 3)))])
def test_one_channel_conv_matches_lax_values_and_gradients(kernel, strides, padding, dtype,
                                                           tolerance):
  """1-channel inputs: on CPU the forward pass is `_tap_sum_conv`, not a convolution."""
  x, k = normal((2, 10, 8, 1), 0).astype(dtype), normal((kernel, kernel, 1, 5), 1).astype(dtype)
  lax_conv = lambda x, k, s, p: lax.conv_general_dilated(x, k, s, p,
                                                         dimension_numbers=NHWC)

  def run(conv):
    f = lambda x, k: jnp.sum(jnp.sin(conv(x, k, (strides, strides), padding).astype(jnp.float32)))
    return jax.jit(jax.value_and_grad(f, (0, 1)))(x, k)

  (want, want_grads), (got, got_grads) = run(lax_conv), run(nhwc_conv)
  np.testing.assert_allclose(got, want, rtol=tolerance)
  for g, w in zip(got_grads, want_grads):
    assert g.dtype == w.dtype and rel_err(g, w) < tolerance
  y = jax.jit(lambda x, k: nhwc_conv(x, k, (strides, strides), padding))(x, k)
  assert y.dtype == dtype
  assert rel_err(y, lax_conv(x, k, (strides, strides), padding)) < tolerance


@pytest.mark.parametrize('platform, kernel, strides, cin, convolutions', [
    ('cpu', 2, 1, 3, 1), ('cpu', 3, 2, 3, 2), ('cpu', 3, 1, 3, 3), ('cpu', 4, 2, 3, 3),
    ('cpu', 4, 2, 1, 0),
    ('cpu', 3, 1, 1, 1), ('cuda', 2, 1, 3, 2), ('cuda', 3, 2, 3, 3), ('cuda', 4, 2, 1, 1),
    ('tpu', 3, 2, 3, 3)])
def test_each_backend_picks_gemm_or_lax_gradients(platform, kernel, strides, cin, convolutions):
  """XLA:CPU: GEMM kernel gradients for 2x2 kernels and 1 input channel; input gradients from
  lax for 3x3 stride 1, from pixel blocks (a convolution) where the stride divides the kernel
  and there are several input channels, else GEMMs; no forward convolution for 1 input
  channel. GPU: GEMMs for 1 input channel and 2x2 kernel gradients; TPU: lax's."""
  x, k = normal((2, 10, 8, cin), 0), normal((kernel, kernel, cin, 5), 1)
  loss = lambda x, k: jnp.sum(nhwc_conv(x, k, (strides, strides), TORCH_PAD1) ** 2)
  grads = jax.jit(jax.grad(loss, (0, 1)))
  module = jax.export.export(grads, platforms=(platform,))(x, k).mlir_module()
  assert module.count('stablehlo.convolution') == convolutions  # forward + lax's gradients


def upsample_nearest_2x(x):
  """(N, H, W, C) -> (N, 2H, 2W, C), nearest neighbour (torch nn.Upsample(2))."""
  n, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
  return x.reshape(n, 2 * h, 2 * w, c)


def test_upsample_conv_matches_upsample_then_conv():
  x = normal((2, 5, 6, 3), 0)
  fused, plain = UpsampleConv(4), nn.Conv(4, (3, 3), padding=TORCH_PAD1)
  variables = jax.jit(fused.init)(key(0), x)
  variables = jax.tree.map(lambda a: a + 0.1, variables)  # non-zero bias

  def run(f):
    return jax.jit(jax.value_and_grad(lambda v, x: jnp.sum(jnp.sin(f(v, x))), (0, 1)))(variables, x)

  (want, want_grads) = run(lambda v, x: plain.apply(v, upsample_nearest_2x(x)))
  (got, got_grads) = run(fused.apply)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    assert rel_err(g, w) < 1e-5


@pytest.mark.parametrize('ties', [False, True])
def test_max_pool_matches_flax_values_and_gradients_with_ties(ties):
  x = normal((2, 6, 8, 3), 0)
  if ties:  # few distinct values: most windows hold several maxima
    x = jnp.round(x)
  weights = normal((2, 3, 4, 3), 1)

  def run(pool):
    return jax.jit(jax.value_and_grad(lambda x: jnp.sum(weights * pool(x))))(x)

  (want, want_grad), (got, got_grad) = run(lambda x: nn.max_pool(x, (2, 2), (2, 2))), run(max_pool_2x2)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_grad, want_grad)  # the first maximum of a window gets it all
  with pytest.raises(ValueError, match='spatial size must be even'):
    max_pool_2x2(jnp.zeros((1, 3, 4, 1)))


def test_cnn_dropout_masks_do_not_depend_on_the_device_count():
  # vmap with an axis name stands in for pmap: two shards of two images must drop the units
  # one batch of four drops (each example's mask keyed by its index in the global batch).
  x = jax.random.uniform(key(1), (4, 16, 16, 1))
  single = BrainCNN(conv_widths=(4, 4), dense_widths=(8, 4))
  sharded = BrainCNN(conv_widths=(4, 4), dense_widths=(8, 4), axis_name='devices')
  variables = jax.jit(single.init, static_argnames='train')(key(0), x, train=False)

  @jax.jit
  def run(variables, x, rng):
    want, _ = single.apply(variables, x, train=True, rngs={'dropout': rng}, mutable=['batch_stats'])
    got, _ = jax.vmap(lambda xs: sharded.apply(variables, xs, train=True, rngs={'dropout': rng},
                                               mutable=['batch_stats']),
                      axis_name='devices')(x.reshape(2, 2, 16, 16, 1))
    return want, got.reshape(4, -1)

  want, got = run(variables, x, key(3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  other, _ = run(variables, x, key(4))
  assert not np.allclose(other, want)  # (the masks do depend on the key)


def test_cnn_dropout_keeps_one_minus_rate_of_the_units_and_scales_them_up():
  # Inverted dropout at rate 0.25: about 75% of the units kept, each divided by 0.75, so the
  # expected activation is the one evaluation (no dropout) sees.
  from brainjax.models.cnn import ExampleDropout
  layer = ExampleDropout(0.25)
  x = jnp.ones((8, 1000))
  y = np.asarray(jax.jit(lambda x, rng: layer.apply({}, x, deterministic=False,
                                                   rngs={'dropout': rng}))(x, key(0)))
  kept = y != 0
  np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
  assert abs(kept.mean() - 0.75) < 0.02
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)


def test_generator_images_take_both_signs_of_the_tanh_range():
  # The generator's images are in [-1, 1], the range real slices are scaled to for D
  # (gan_gen.train_step): an untrained one's pixels spread over both signs.
  model = Generator(latent_dim=4, widths=(4, 4), image_size=32)
  z = 3 * normal((4, 4), 1)
  fake, _ = jax.jit(model.init_with_output, static_argnames='train')(key(0), z, train=False)
  assert -1 <= float(fake.min()) < -0.5 and 0.5 < float(fake.max()) <= 1


def test_discriminator_hidden_units_are_leaky_relus_of_slope_0_2():
  # One 4x4 stride-2 conv (torch padding 1) on a 4x4 image of ones: each of the 2x2 outputs
  # sees 9 pixels; with kernel -1/16, bias 0, the conv gives -9/16 each, LeakyReLU(0.2) -0.1125,
  # and a dense layer of ones sums them: -0.45 (a ReLU would give 0).
  model = Discriminator(widths=(1,), image_size=4)
  x = jnp.ones((1, 4, 4, 1))
  params = {'Conv_0': {'kernel': jnp.full((4, 4, 1, 1), -1 / 16), 'bias': jnp.zeros(1)},
            'Dense_0': {'kernel': jnp.ones((4, 1)), 'bias': jnp.zeros(1)}}
  np.testing.assert_allclose(model.apply({'params': params}, x), [-0.45], rtol=1e-6)


def test_cvae_samples_z_with_the_posterior_s_standard_deviation():
  # __call__ decodes z = mean + exp(logvar / 2) * noise (the reparameterisation the KL term
  # of its loss assumes), as `decode` of that z gives.
  model = BrainCVAE(latent_dim=4, conv_widths=(2, 3), image_size=32)
  x, noise = images(2, size=32), normal((2, 4), 1)

  @jax.jit
  def run(x, noise):
    variables = model.init(key(0), x, noise)
    # (a logvar head far from 0, so that exp(logvar / 2) is far from 1)
    params = dict(variables['params'])
    encoder = dict(params['encoder'])
    encoder['logvar'] = dict(encoder['logvar'], bias=encoder['logvar']['bias'] - 2.0)
    params['encoder'] = encoder
    variables = {'params': params}
    recon, mean, logvar = model.apply(variables, x, noise)
    z = mean + jnp.exp(0.5 * logvar) * noise
    return recon, model.apply(variables, z, method='decode'), logvar

  recon, decoded, logvar = run(x, noise)
  assert float(logvar.max()) < -1.0
  np.testing.assert_allclose(recon, decoded, atol=1e-6)


def test_batch_norm_where_float32_makes_a_spread_negative_matches_flax():
  # A channel of large mean and tiny spread: E[x^2] - E[x]^2 rounds below 0, and the variance
  # is clipped at 0 (no gradient through it), as flax does.
  rng = np.random.default_rng(0)
  for _ in range(50):
    x = jnp.asarray(1000.0 + 1e-3 * rng.standard_normal((16, 1)), jnp.float32)
    if float((x * x).mean() - x.mean() ** 2) < 0:
      break
  else:
    pytest.fail('no negative float32 spread drawn')
  weights = jnp.asarray(rng.standard_normal((16, 1)), jnp.float32)

  def input_gradient(model):
    variables = model.init(key(0), x)
    loss = lambda x: jnp.sum(jnp.tanh(model.apply(variables, x, mutable=['batch_stats'])[0])
                             * weights)
    return jax.grad(loss)(x)

  kwargs = dict(use_running_average=False, momentum=0.9, epsilon=1e-5)
  want = input_gradient(nn.BatchNorm(**kwargs))
  assert rel_err(input_gradient(BatchNorm(**kwargs)), want) < 1e-5


def test_batch_norm_in_evaluation_adds_epsilon_to_the_running_variance():
  model = BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)
  x = jnp.ones((2, 4, 4, 1))
  variables = model.init(key(0), x)
  variables = {'params': variables['params'],
               'batch_stats': {'mean': jnp.ones(1), 'var': jnp.asarray([1e-7])}}
  np.testing.assert_allclose(model.apply(variables, x + 0.01), 0.01 / np.sqrt(1e-7 + 1e-5),
                             rtol=1e-5)
