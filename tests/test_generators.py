"""The VAE and GAN tasks: a step lowers the loss, 8 devices match 1, resume, export."""
import functools
import json
import os
import types

import jax
import ml_collections
import numpy as np
import optax
import pytest

from brainjax.data import synthetic
from brainjax.tasks import datasets
from brainjax.tasks import gan_gen
from brainjax.tasks import generation
from brainjax.tasks import vae_gen
from brainjax.tasks import variational
from brainjax.train import loop
from brainjax.train import parallel
from brainjax.train import reruns
from brainjax.train.state import TrainState
from configs import gan_gen as gan_config
from configs import vae_gen as vae_config


def smoke(module, variant, tmp_path, **overrides):
  config = module.get_config(f'{variant},smoke')
  config.cache_dir = str(tmp_path / 'cache')
  config.update_from_flattened_dict(overrides)
  return config


def images(n=16, seed=0):
  """Bright discs on black: structured enough for a loss to fall in a few steps."""
  yy, xx = np.mgrid[:128, :128]
  rng = np.random.default_rng(seed)
  radius = rng.uniform(20, 50, size=(n, 1, 1))
  disc = ((yy - 64) ** 2 + (xx - 64) ** 2 < radius ** 2).astype(np.float32)
  return (disc * rng.uniform(0.5, 1.0, size=(n, 1, 1)))[..., None]


def vae_step_fn(config, axis_name=None):
  model = vae_gen.create_model(config, axis_name)
  return model, functools.partial(variational.train_step, model=model,
                                  reconstruction_loss=vae_gen.vae_reconstruction_loss)


def gan_step_fn(config, axis_name=None):
  generator, discriminator = gan_gen.create_models(config, axis_name)
  return generator, functools.partial(gan_gen.train_step, generator=generator,
                                      discriminator=discriminator)


def test_vae_steps_lower_the_loss(tmp_path):
  config = smoke(vae_config, 'positive', tmp_path, learning_rate=3e-3)
  model, step = vae_step_fn(config)
  state = vae_gen.create_train_state(config, model, jax.random.PRNGKey(0))
  step = jax.jit(step)
  batch = {'image': images()}
  losses = []
  for i in range(8):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    losses.append(float(metrics['loss']))
  assert losses[-1] < losses[0]


def test_gan_samples_are_images_in_range(tmp_path):
  config = smoke(gan_config, 'negative', tmp_path)
  generator, step = gan_step_fn(config)
  state = gan_gen.create_train_state(config, generator, *gan_gen.create_models(config)[1:],
                                     jax.random.PRNGKey(0))
  state, metrics = jax.jit(step)(state, {'image': images(8)}, jax.random.PRNGKey(1))
  assert np.isfinite(float(metrics['d_loss'])) and np.isfinite(float(metrics['g_loss']))
  out = np.asarray(gan_gen.sample_images(generator, state.generator.variables,
                                         jax.random.PRNGKey(2), 4))
  assert out.shape == (4, 128, 128, 1) and out.min() >= 0 and out.max() <= 1
  # The generator's images of samples 0-3's noise, mapped from [-1, 1], and four different ones.
  z = generation.latent_noise(jax.random.PRNGKey(2), 4, generator.latent_dim)
  images_of_z = generator.apply(state.generator.variables, z, train=False)
  np.testing.assert_allclose(out, (images_of_z + 1) / 2, rtol=1e-5, atol=1e-6)
  assert len({sample.tobytes() for sample in out}) == 4 and out.std() > 0
  sample_fn = functools.partial(gan_gen.sample_images, generator)
  np.testing.assert_allclose(generation.sample_in_batches(
      sample_fn, state.generator.variables, jax.random.PRNGKey(2), 4), out, rtol=1e-5, atol=1e-6)


def test_an_export_s_images_do_not_depend_on_its_size():
  """Image i is the same, to the bit, in an export of any size: XLA rounds each batch shape's
  program its own way (drawn in batches of min(export.batch_size, num_samples), a few pixels of
  an export came out a grey level off in another size, and its classifier refused it)."""
  config = vae_config.get_config('positive,smoke')
  model = vae_gen.create_model(config)
  state = vae_gen.create_train_state(config, model, jax.random.PRNGKey(0))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  sample_fn = functools.partial(vae_gen.sample_images, model)
  drawn = [generation.sample_in_batches(sample_fn, variables, jax.random.PRNGKey(3), num)
           for num in (150, 7)]
  np.testing.assert_array_equal(drawn[1], drawn[0][:7])
  asked = []
  generation.sample_in_batches(lambda v, r, num, first: asked.append((num, first)) or
                               np.zeros((num, 1)), None, None, 150)
  assert asked == [(generation.SAMPLES_PER_CALL, 0), (generation.SAMPLES_PER_CALL, 100)]


def test_gan_task_trains_and_exports(tmp_path):
  """The whole GAN task on phantom data (the VAE's flow, generation.py, with the GAN's step)."""
  workdir = str(tmp_path / 'run')
  config = smoke(gan_config, 'negative', tmp_path, num_devices=1)
  metrics = gan_gen.train_and_evaluate(config, workdir)
  assert metrics['steps'] > 0 and metrics['exported'] == 10
  assert np.isfinite([metrics['train_d_loss'], metrics['train_g_loss']]).all()
  assert os.listdir(os.path.join(workdir, 'samples'))
  provenance = json.load(open(os.path.join(workdir, 'synthetic', 'manifest.json')))['classes']
  assert list(provenance) == ['no'] and provenance['no']['generator'] == 'gan_gen'
  assert provenance['no']['checkpoint_step'] == metrics['steps']
  exported = synthetic.read_synthetic(os.path.join(workdir, 'synthetic'))
  assert len(exported) == 10 and (exported.labels == 0).all() and exported.images.std() > 0


def test_gan_step_equals_the_plain_three_pass_update(tmp_path):
  """train_step shares one generator pass and one D batch; the plain form has three passes."""
  config = smoke(gan_config, 'positive', tmp_path)
  generator, discriminator = gan_gen.create_models(config)
  state = gan_gen.create_train_state(config, generator, discriminator, jax.random.PRNGKey(0))
  # SGD, not Adam: the generator's conv biases feed BatchNorm, so their gradients are
  # float noise, which Adam would scale up to learning-rate-sized steps of either sign.
  state = jax.tree.map(lambda s: TrainState.create(s.variables, optax.sgd(0.1)), state,
                       is_leaf=lambda s: isinstance(s, TrainState))
  batch, rng = {'image': images(8)}, jax.random.PRNGKey(1)

  def plain_step(state, batch, rng):
    real = batch['image'] * 2.0 - 1.0
    z = parallel.example_normal(rng, real.shape[0], (generator.latent_dim,), None)
    g, d = state.generator, state.discriminator

    def generate(g_params):
      fake, updates = generator.apply({'params': g_params, 'batch_stats': g.batch_stats}, z,
                                      train=True, mutable=['batch_stats'])
      return fake, updates['batch_stats']

    def criticise(d_params, x):
      return discriminator.apply({'params': d_params}, x, train=True)

    fake = jax.lax.stop_gradient(generate(g.params)[0])
    d_loss, d_grads = jax.value_and_grad(lambda p: gan_gen.discriminator_loss(
        criticise(p, real), criticise(p, fake)))(d.params)
    d = d.apply_gradients(d_grads, d.batch_stats)
    (g_loss, stats), g_grads = jax.value_and_grad(
        lambda p: (lambda f, s: (gan_gen.generator_loss(criticise(d.params, f)), s))(*generate(p)),
        has_aux=True)(g.params)
    return gan_gen.GANState(g.apply_gradients(g_grads, stats), d), {'d_loss': d_loss,
                                                                     'g_loss': g_loss}

  step = functools.partial(gan_gen.train_step, generator=generator, discriminator=discriminator)
  got_state, got = jax.jit(step)(state, batch, rng)
  want_state, want = jax.jit(plain_step)(state, batch, rng)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
  for g, w in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('task', ['vae', 'gan'])
@pytest.mark.usefixtures('eight_devices')
def test_eight_devices_give_the_one_device_loss_curve(task, tmp_path):
  """Same global batch of 16: gradients and BatchNorm statistics are averaged across devices."""
  module = vae_config if task == 'vae' else gan_config
  curves = {}
  for n in (1, 8):
    config = smoke(module, 'positive', tmp_path, num_devices=n, batch_size=16, num_epochs=3,
                   log_every_steps=1, checkpoint_every_secs=60.0)
    axis = parallel.AXIS if n > 1 else None
    if task == 'vae':
      model, step = vae_step_fn(config, axis)
      state = vae_gen.create_train_state(config, model, jax.random.PRNGKey(0))
    else:
      generator, step = gan_step_fn(config, axis)
      state = gan_gen.create_train_state(config, generator, gan_gen.create_models(config)[1],
                                         jax.random.PRNGKey(0))
    _, summary = loop.fit(config, str(tmp_path / f'{task}{n}'), state, step,
                          {'image': images(32)})
    curves[n] = summary
  for key in curves[1]:
    if key.startswith('train_') and key != 'train_images_per_s':
      # float32 sums reduce in another order across 8 devices; a real divergence (e.g.
      # unsynchronised BatchNorm statistics) shows up at the percent level.
      np.testing.assert_allclose(curves[8][key], curves[1][key], rtol=1e-3, err_msg=key)


def test_vae_task_trains_resumes_and_exports(tmp_path, monkeypatch):
  """The whole task on phantom data; a second run with the same workdir trains nothing more."""
  workdir = str(tmp_path / 'run')
  config = smoke(vae_config, 'positive', tmp_path, num_devices=1)
  first = vae_gen.train_and_evaluate(config, workdir)
  assert first['steps'] > 0 and os.path.exists(os.path.join(workdir, 'metrics.json'))
  assert os.listdir(os.path.join(workdir, 'samples'))
  manifest = json.load(open(os.path.join(workdir, 'synthetic', 'manifest.json')))
  provenance = manifest['classes']['yes']
  assert provenance['generator'] == 'vae_gen' and provenance['count'] == 10
  assert provenance['checkpoint_step'] == first['steps'] and provenance['seed'] == 0
  exported = synthetic.read_synthetic(os.path.join(workdir, 'synthetic'))
  assert len(exported) == 10 and (exported.labels == 1).all()
  again = vae_gen.train_and_evaluate(config, workdir)
  np.testing.assert_equal(again, first)  # the same metrics.json, the last losses included
  assert 'train_loss' in again
  trained = open(os.path.join(workdir, 'metrics.json')).read()
  regenerated = vae_gen.train_and_evaluate(
      ml_collections.ConfigDict({**config.to_dict(), 'mode': 'generate'}), workdir)
  assert regenerated['exported'] == 10 and regenerated['train_loss'] == first['train_loss']
  assert open(os.path.join(workdir, 'metrics.json')).read() == trained  # training's kept
  # A re-export asking for fewer epochs than it trained is refused, as a resumed run is (its
  # config.json would record a length the model has passed).
  with pytest.raises(reruns.RerunRefused, match=r'has trained \d+ steps .* more than '
                     'num_epochs=1 give'):
    vae_gen.train_and_evaluate(ml_collections.ConfigDict(
        {**config.to_dict(), 'mode': 'generate', 'num_epochs': 1}), workdir)
  # An unfinished run (a rerun that trains again removes metrics.json until it ends): its
  # re-export's metrics.json says which step it exported (it had no steps at all).
  os.remove(os.path.join(workdir, 'metrics.json'))
  unfinished = vae_gen.train_and_evaluate(
      ml_collections.ConfigDict({**config.to_dict(), 'mode': 'generate'}), workdir)
  assert unfinished['steps'] == first['steps'] == provenance['checkpoint_step']
  assert json.load(open(os.path.join(workdir, 'metrics.json')))['steps'] == first['steps']
  # The export records the split of the data as it is now, which a classifier checks for its
  # test slices: a generator trained before a file was removed from the folder saw another.
  export = open(os.path.join(workdir, 'synthetic', 'manifest.json')).read()
  real_source = datasets.real_source
  def one_file_removed(config):  # (the last: a tumour slice, whose split then changes)
    source = real_source(config)
    return source._replace(examples=source.examples.take(np.arange(len(source.examples) - 1)))
  monkeypatch.setattr(datasets, 'real_source', one_file_removed)
  with pytest.raises(reruns.RerunRefused, match='trained on other data'):
    vae_gen.train_and_evaluate(
        ml_collections.ConfigDict({**config.to_dict(), 'mode': 'generate'}), workdir)
  assert open(os.path.join(workdir, 'synthetic', 'manifest.json')).read() == export


def test_a_run_from_step_0_leaves_no_grids_of_an_earlier_attempt(tmp_path):
  # An attempt that stopped before its first checkpoint, with other settings: its grid of a
  # step this run's epochs do not end at.
  workdir = tmp_path / 'run'
  (workdir / 'samples').mkdir(parents=True)
  (workdir / 'samples' / 'step_0000005.png').write_bytes(b'an earlier attempt')
  config = smoke(vae_config, 'positive', tmp_path, num_devices=1)
  summary = vae_gen.train_and_evaluate(config, str(workdir))
  per_epoch = summary['steps'] // config.num_epochs
  assert sorted(os.listdir(workdir / 'samples')) == [
      f'step_{per_epoch * (epoch + 1):07d}.png' for epoch in range(config.num_epochs)]


def test_the_networks_are_built_for_data_image_size():
  # The VAE, the GAN and BrainCVAE took 128 px whatever data.image_size said.
  from brainjax.tasks import cvae_cls
  from configs import cvae_cls as cvae_config
  key = jax.random.PRNGKey(0)
  for module, config in ((vae_gen, vae_config.get_config('positive,smoke')),
                         (cvae_cls, cvae_config.get_config('real,smoke'))):
    config.data.image_size = 64
    model = module.create_model(config)
    state = jax.eval_shape(lambda: module.create_train_state(config, model, key))
    x = jax.ShapeDtypeStruct((2, 64, 64, 1), np.float32)
    noise = jax.ShapeDtypeStruct((2, model.latent_dim), np.float32)
    recon = jax.eval_shape(lambda v, a, z: model.apply(v, a, z, train=False,
                                                       mutable=False)[0], state.variables, x, noise)
    assert recon.shape == (2, 64, 64, 1)
  config = gan_config.get_config('positive,smoke')
  config.data.image_size = 64
  generator, discriminator = gan_gen.create_models(config)
  state = jax.eval_shape(lambda: gan_gen.create_train_state(config, generator, discriminator, key))
  z = jax.ShapeDtypeStruct((2, generator.latent_dim), np.float32)
  fake = jax.eval_shape(lambda v, z: generator.apply(v, z, train=False), state.generator.variables,
                        z)
  assert fake.shape == (2, 64, 64, 1)
  jax.eval_shape(lambda v, x: discriminator.apply(v, x), state.discriminator.variables, fake)


def test_kl_to_standard_normal_against_the_closed_form():
  mean = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, -2.0]], np.float32)
  logvar = np.array([[0.0, 0.0], [0.0, np.log(2.0)], [-1.0, 0.3]], np.float32)
  var = np.exp(logvar.astype(np.float64))
  # KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1) / 2 - log s, summed over the latent dimensions
  want = np.sum((var + mean.astype(np.float64) ** 2 - 1) / 2 - logvar / 2, axis=-1)
  got = np.asarray(variational.kl_to_standard_normal(mean, logvar))
  assert got.shape == (3,) and got[0] == 0.0
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got[1], 0.5 + 0.5 * (1 - np.log(2.0)), rtol=1e-5)


def test_negative_elbo_weighs_the_kl_and_averages_over_the_batch():
  images = np.zeros((2, 3), np.float32)
  output = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], np.float32)  # reconstruction 6 and 1
  mean = np.array([[1.0], [2.0]], np.float32)
  logvar = np.zeros((2, 1), np.float32)  # KL 0.5 and 2
  recon = lambda out, img: (out - img).sum(axis=1)
  loss, terms = variational.negative_elbo(recon, output, images, mean, logvar, kl_weight=0.1)
  np.testing.assert_allclose(loss, ((6 + 0.1 * 0.5) + (1 + 0.1 * 2)) / 2, rtol=1e-5)
  np.testing.assert_allclose(terms['reconstruction'], 3.5, rtol=1e-5)
  np.testing.assert_allclose(terms['kl'], 1.25, rtol=1e-5)


def test_reconstruction_losses_sum_over_each_image():
  from brainjax.tasks import cvae_cls
  rng = np.random.default_rng(0)
  images = rng.random((2, 4, 4, 1)).astype(np.float32)
  other = rng.random((2, 4, 4, 1)).astype(np.float32)
  np.testing.assert_allclose(cvae_cls.cvae_reconstruction_loss(other, images),
                             ((other - images) ** 2).sum(axis=(1, 2, 3)), rtol=1e-5)
  logits = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  bce = -(images * np.log(p) + (1 - images) * np.log1p(-p))
  np.testing.assert_allclose(vae_gen.vae_reconstruction_loss(logits, images),
                             bce.sum(axis=(1, 2, 3)), rtol=1e-5)


def test_gan_losses_are_the_non_saturating_cross_entropies():
  real = np.array([2.0, -1.0, 0.5], np.float32)
  fake = np.array([-3.0, 0.0, 1.5, 4.0], np.float32)
  neg_log_sigmoid = lambda x: np.log1p(np.exp(-x.astype(np.float64)))  # -log D
  # D: real -> 1, fake -> 0; G: -log D(G(z)), whose gradient does not vanish where D wins.
  np.testing.assert_allclose(gan_gen.discriminator_loss(real, fake),
                             neg_log_sigmoid(real).mean() + neg_log_sigmoid(-fake).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(gan_gen.generator_loss(fake), neg_log_sigmoid(fake).mean(), rtol=1e-5)
  grad = jax.grad(lambda f: gan_gen.generator_loss(f))(np.array([-10.0], np.float32))
  assert float(grad[0]) < -0.99


def test_the_vae_step_weighs_the_kl_by_kl_weight_and_moves_batch_norm_statistics(tmp_path):
  # The task's step (vae_gen.make_train_step) with kl_weight 0.25: its loss is reconstruction
  # + 0.25 KL, not + KL; and it runs the network in train mode (BatchNorm's running statistics
  # move, as loop.fit's checkpoints and the sampler then read them).
  from brainjax.models import VAE
  from brainjax.train.state import init_variables
  config = smoke(vae_config, 'positive', tmp_path, kl_weight=0.25)
  model = VAE(latent_dim=4, encoder_widths=(4, 4), decoder_widths=(4, 4), image_size=8)
  variables = init_variables(model, jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32),
                             np.zeros((1, 4), np.float32))
  state = TrainState.create(variables, optax.sgd(0.1))
  step = jax.jit(vae_gen.make_train_step(config, model))
  new_state, metrics = step(state, {'image': images(4)[:, ::16, ::16]}, jax.random.PRNGKey(1))
  loss, rec, kl = (float(metrics[k]) for k in ('loss', 'reconstruction', 'kl'))
  assert kl > 1e-3 and rec > 0
  np.testing.assert_allclose(loss, rec + 0.25 * kl, rtol=1e-6)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new_state.batch_stats),
                                                    jax.tree.leaves(state.batch_stats))]
  assert moved and all(moved)


class _StopBeforeTraining(Exception):
  pass


def test_a_resumed_run_keeps_the_grids_of_its_earlier_epochs(tmp_path, cache_dir, monkeypatch):
  # Only a run starting from step 0 clears workdir/samples: one resuming from a checkpoint
  # keeps the grids its own earlier epochs wrote.
  def fit(*args, **kwargs):
    raise _StopBeforeTraining
  monkeypatch.setattr(loop, 'fit', fit)
  config = smoke(vae_config, 'positive', tmp_path, num_devices=1)
  config.cache_dir = cache_dir
  for resumed in (True, False):
    workdir = tmp_path / f'run_{resumed}'
    (workdir / 'samples').mkdir(parents=True)
    grid = workdir / 'samples' / 'step_0000005.png'
    grid.write_bytes(b'a grid of epoch 1')
    if resumed:
      (workdir / 'checkpoints' / '5').mkdir(parents=True)  # (a committed checkpoint of step 5)
    with pytest.raises(_StopBeforeTraining):
      generation.run(config, str(workdir), None, None, None, None)
    assert grid.exists() == resumed


def test_sample_grid_noise_is_no_other_seed_s_key(tmp_path):
  # (it was PRNGKey(seed + 1): seed 1's own key, the one its networks are initialised from,
  # and past 2**32 - 1 seed 0's)
  drawn = []

  def sample(variables, rng, num):
    drawn.append(np.asarray(jax.random.key_data(rng)))
    return np.zeros((num, 4, 4, 1), np.float32)

  for seed in (0, 2 ** 32 - 1):
    generation.sample_grid_callback(str(tmp_path), sample, lambda s: None, seed, num=2)(
        types.SimpleNamespace(step=1))
  keys = [np.asarray(jax.random.key_data(jax.random.PRNGKey(s))) for s in (0, 1)]
  assert not any(np.array_equal(d, k) for d in drawn for k in keys)
  assert not np.array_equal(drawn[0], drawn[1])


def test_the_export_draws_from_export_seed(tmp_path):
  config = smoke(vae_config, 'positive', tmp_path)
  config.seed, config.export.seed, config.export.num_samples = 0, 7, 3
  config.export.dir = str(tmp_path / 'export')
  size = config.data.image_size
  sample = lambda variables, rng, num, first=0: jax.random.uniform(
      jax.random.fold_in(rng, first), (num, size, size, 1))
  generation.export(config, str(tmp_path / 'run'), sample, None, 5, None)
  want = np.round(np.asarray(sample(None, jax.random.PRNGKey(7), 3)) * 255) / 255
  np.testing.assert_allclose(synthetic.read_synthetic(config.export.dir).images, want, atol=1e-6)
  assert synthetic.read_manifest(config.export.dir)['classes']['yes']['seed'] == 7
