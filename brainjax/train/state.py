"""Training state: step count, parameters, BatchNorm statistics and optimiser state (the run's RNG
key is not kept here: loop.fit derives each step's from config.seed)."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from brainjax import threads
from brainjax.train import compile_options


class TrainState(flax.struct.PyTreeNode):
  """One network's trainable state. `step` counts optimiser updates."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, variables, tx):
    params = variables['params']
    return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
               batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params), tx=tx)

  @property
  def variables(self):
    """What `module.apply` takes for inference."""
    return {'params': self.params, 'batch_stats': self.batch_stats}

  def apply_gradients(self, grads, batch_stats):
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)


def check_networks(create_state):
  """Traces `create_state(rng)` for its shapes only (no compute, no memory): a network that
  cannot take the configured image size, or whose state (parameters, statistics, optimiser
  state) is larger than a device's memory, is a ValueError before a run writes anything."""
  shapes = jax.eval_shape(create_state, jax.random.PRNGKey(0))
  size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes))
  device = jax.local_devices()[0]
  limit = (device.memory_stats() or {}).get('bytes_limit')  # (a CPU reports none)
  on_device = dict(memory=limit, where=f'a {device.platform} device') if limit else {}
  threads.check_fits_in_memory(
      size, 'the network sizes give a training state that would', 'lower them', **on_device)


def set_learning_rate(state, learning_rate):
  """Sets the rate of an `optax.inject_hyperparams` optimiser (reduce-on-plateau is host-side)."""
  hyperparams = dict(state.opt_state.hyperparams,
                     learning_rate=jax.numpy.asarray(learning_rate, jax.numpy.float32))
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def init_variables(model, rng, *inputs):
  """model.init(rng, *inputs, train=False), compiled: op-by-op init of a big net is slow.

  It runs once: compiled with `compile_options.LIGHT_OPTIMIZATION` on a CPU (seconds less
  compilation for the same values). Traced inside another function (check_networks'
  eval_shape), it is a plain nested jit: only a top-level jit takes compiler options."""
  # (inside a trace a new array is a tracer, even where rng and inputs were closed over)
  traced = isinstance(jnp.zeros(()), jax.core.Tracer)
  options = None if traced else compile_options.for_platform(jax.default_backend(),
                                                             compile_options.LIGHT_OPTIMIZATION)
  return jax.jit(lambda r: model.init(r, *inputs, train=False), compiler_options=options)(rng)
