"""The generative VAE (study 5.1): its reconstruction loss, sampler and the task runner.

The train step (negative ELBO) is shared with the BrainCVAE: brainjax/tasks/variational.py.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from brainjax import models
from brainjax.tasks import generation
from brainjax.tasks import variational
from brainjax.train import compile_options
from brainjax.train import parallel
from brainjax.train.state import TrainState
from brainjax.train.state import check_networks
from brainjax.train.state import init_variables


def create_model(config, axis_name=None):
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  return models.get_model('vae', **config.model, image_size=config.data.image_size, dtype=dtype,
                          axis_name=axis_name)


def create_train_state(config, model, rng):
  size = config.data.image_size
  variables = init_variables(model, rng, jnp.zeros((1, size, size, 1)),
                             jnp.zeros((1, model.latent_dim)))
  tx = optax.inject_hyperparams(optax.adamw)(
      learning_rate=config.learning_rate, b1=config.b1, b2=config.b2,
      weight_decay=config.weight_decay)
  return TrainState.create(variables, tx)


def vae_reconstruction_loss(logits, images):
  """Binary cross-entropy summed over each image's pixels (the decoder returns logits)."""
  return optax.sigmoid_binary_cross_entropy(logits, images).sum(axis=(1, 2, 3))


@compile_options.jit(cpu_options=compile_options.EIGEN_CONVOLUTIONS_LIGHT,
                     static_argnames=('model', 'num'))
def sample_images(model, variables, rng, num, first=0):
  """`num` new slices in [0, 1] decoded from the prior: samples first .. first + num - 1 of
  rng (generation.latent_noise)."""
  z = generation.latent_noise(rng, num, model.latent_dim, first)
  logits = model.apply(variables, z, train=False, method=model.decode)
  return jax.nn.sigmoid(logits.astype(jnp.float32))


def make_train_step(config, model):
  """The train step `loop.fit` compiles, bound to this run's model (the bench times the same)."""
  return functools.partial(variational.train_step, model=model, kl_weight=config.kl_weight,
                           reconstruction_loss=vae_reconstruction_loss)


def check_config(config):
  """A ValueError for settings no run can use (launch.py calls it before writing anything)."""
  generation.check_config(config)
  check_networks(lambda rng: create_train_state(config, create_model(config), rng))


def train_and_evaluate(config, workdir):
  """Trains (or resumes) the class's VAE, then exports its synthetic slices."""
  devices = parallel.train_devices(config.num_devices)
  model = create_model(config, parallel.AXIS if len(devices) > 1 else None)
  state = create_train_state(config, model, jax.random.PRNGKey(config.seed))
  # Sampling runs outside the data-parallel step: with a model that names no device axis.
  sample_fn = functools.partial(sample_images, create_model(config))
  return generation.run(config, workdir, state, make_train_step(config, model), sample_fn,
                        lambda s: s.variables)
