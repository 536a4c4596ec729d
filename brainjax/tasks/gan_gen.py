"""The GAN (study 5.1): non-saturating losses, the alternating train step, sampler, runner.

Real slices are scaled to [-1, 1], the range of the generator's tanh, before the
discriminator sees them (the authors fed [0, 1] reals against [-1, 1] fakes).
"""
import functools

import flax
import jax
import jax.numpy as jnp
import optax

from brainjax import models
from brainjax.tasks import generation
from brainjax.train import compile_options
from brainjax.train import parallel
from brainjax.train.state import TrainState
from brainjax.train.state import check_networks
from brainjax.train.state import init_variables


class GANState(flax.struct.PyTreeNode):
  generator: TrainState
  discriminator: TrainState

  @property
  def step(self):
    return self.generator.step


def create_models(config, axis_name=None):
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  size = config.data.image_size
  return (models.get_model('generator', **config.generator, image_size=size, dtype=dtype,
                           axis_name=axis_name),
          models.get_model('discriminator', **config.discriminator, image_size=size, dtype=dtype))


def create_train_state(config, generator, discriminator, rng):
  g_rng, d_rng = jax.random.split(rng)
  size = config.data.image_size
  tx = lambda: optax.inject_hyperparams(optax.adam)(
      learning_rate=config.learning_rate, b1=config.b1, b2=config.b2)
  g_vars = init_variables(generator, g_rng, jnp.zeros((1, generator.latent_dim)))
  d_vars = init_variables(discriminator, d_rng, jnp.zeros((1, size, size, 1)))
  return GANState(TrainState.create(g_vars, tx()), TrainState.create(d_vars, tx()))


def discriminator_loss(real_logits, fake_logits):
  return (optax.sigmoid_binary_cross_entropy(real_logits, jnp.ones_like(real_logits)).mean()
          + optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits)).mean())


def generator_loss(fake_logits):
  """Non-saturating: the generator maximises log D(G(z))."""
  return optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)).mean()


def train_step(state, batch, rng, *, generator, discriminator, axis_name=None):
  """One discriminator update on real and fake slices, then one generator update."""
  real = batch['image'] * 2.0 - 1.0
  z = parallel.example_normal(rng, real.shape[0], (generator.latent_dim,), axis_name)
  g, d = state.generator, state.discriminator

  def generate(g_params):
    fake, updates = generator.apply({'params': g_params, 'batch_stats': g.batch_stats}, z,
                                    train=True, mutable=['batch_stats'])
    return fake, updates['batch_stats']

  def criticise(d_params, images):
    return discriminator.apply({'params': d_params}, images, train=True).astype(jnp.float32)

  # One generator pass serves both updates (as in the PyTorch reference the bench compares
  # with); its VJP is applied once the updated discriminator has judged the same fake slices.
  fake, generator_vjp, g_batch_stats = jax.vjp(generate, g.params, has_aux=True)

  def d_loss_fn(d_params):
    # Real and fake slices in one batch: D has no BatchNorm, so this is the
    # same function in one pass instead of two.
    logits = criticise(d_params, jnp.concatenate([real, jax.lax.stop_gradient(fake)]))
    return discriminator_loss(logits[:real.shape[0]], logits[real.shape[0]:])

  d_loss, d_grads = jax.value_and_grad(d_loss_fn)(d.params)
  d = d.apply_gradients(parallel.mean_over_devices(d_grads, axis_name), d.batch_stats)
  g_loss, fake_grads = jax.value_and_grad(lambda f: generator_loss(criticise(d.params, f)))(fake)
  g_grads, = generator_vjp(fake_grads)
  g = g.apply_gradients(parallel.mean_over_devices(g_grads, axis_name), g_batch_stats)
  # (no 'loss': the sum of two adversaries' losses measures nothing)
  metrics = parallel.mean_over_devices({'g_loss': g_loss, 'd_loss': d_loss}, axis_name)
  return GANState(g, d), metrics


@compile_options.jit(cpu_options=compile_options.EIGEN_CONVOLUTIONS_LIGHT,
                     static_argnames=('generator', 'num'))
def sample_images(generator, variables, rng, num, first=0):
  """`num` new slices in [0, 1]: samples first .. first + num - 1 of rng
  (generation.latent_noise)."""
  z = generation.latent_noise(rng, num, generator.latent_dim, first)
  return (generator.apply(variables, z, train=False).astype(jnp.float32) + 1.0) / 2.0


def make_train_step(config, generator, discriminator):
  """The train step `loop.fit` compiles, bound to this run's models (the bench times the same)."""
  del config  # (the other tasks' steps read settings from it)
  return functools.partial(train_step, generator=generator, discriminator=discriminator)


def check_config(config):
  """A ValueError for settings no run can use (launch.py calls it before writing anything)."""
  generation.check_config(config)
  check_networks(lambda rng: create_train_state(config, *create_models(config), rng))


def train_and_evaluate(config, workdir):
  """Trains (or resumes) the class's GAN, then exports its synthetic slices."""
  devices = parallel.train_devices(config.num_devices)
  generator, discriminator = create_models(config, parallel.AXIS if len(devices) > 1 else None)
  state = create_train_state(config, generator, discriminator, jax.random.PRNGKey(config.seed))
  # Sampling runs outside the data-parallel step: with a generator that names no device axis.
  sample_fn = functools.partial(sample_images, create_models(config)[0])
  return generation.run(config, workdir, state, make_train_step(config, generator, discriminator),
                        sample_fn, lambda s: s.generator.variables)
