"""XLA compile options for the convolution networks' heavy programs: Eigen's convolutions on CPU.

XLA:CPU (jaxlib 0.10.2) gives three kinds of work to YNNPACK by default
(`xla_cpu_experimental_ynn_fusion_type`: single dots, single convolutions and
reductions), and YNNPACK runs each convolution on one thread. With convolutions
left out of that list, XLA runs them through Eigen, which uses every core: on the
2-core machine here a batch-64 3x3 conv 32->64 at 64 px took 106 ms in YNNPACK
and 50 ms in Eigen. YNNPACK keeps the dots and reductions, where it is faster (all
three off: BrainCNN's step 2.4x slower). Train steps with this option, same
process: GAN 15% less time, VAE 9%, BrainCNN and BrainCVAE within noise (their
single-threaded convolutions overlap other work); BrainCNN's forward pass at batch
256 675 ms against 1057 ms; the reconstruction error of 3000 slices 14.0 s against
15.7 s (README, Performance).

`loop.compile_step` passes `for_platform` of its devices to the train step's jit;
the forward passes (evaluation, sampling, reconstruction error) are jitted with
`jit`, which picks the default backend's options when called.
"""
import functools
from typing import Callable, Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp

# XLA's default list (jaxlib 0.10.2) without LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
_CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
                'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


def for_platform(platform: str) -> Optional[Dict[str, str]]:
  """`compiler_options` for a program compiled for `platform` (None: XLA's defaults).

  Only 'cpu' gets options, and only where this jaxlib accepts them: the option is
  experimental, and an XLA that renamed it keeps its defaults (with a warning).
  """
  if platform != 'cpu' or not _cpu_options_accepted():
    return None
  return dict(_CPU_OPTIONS)


@functools.cache
def _cpu_options_accepted() -> bool:
  cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  try:
    jax.jit(jnp.negative, compiler_options=_CPU_OPTIONS).lower(
        jax.ShapeDtypeStruct((), jnp.float32, sharding=cpu)).compile()
  except jax.errors.JaxRuntimeError as error:
    logging.warning('XLA:CPU keeps its default YNNPACK fusions (%s): %s', _CPU_OPTIONS, error)
    return False
  return True


def jit(fun: Optional[Callable] = None, /, **jit_kwargs):
  """`jax.jit(fun, **jit_kwargs)` compiled with the default backend's `for_platform` options.

  Usable as `@jit(static_argnames=...)`. The backend is looked up when called, not
  at import (a multi-host run creates it in `jax.distributed.initialize()`); one
  compiled function per platform. `.lower(...)` lowers as jax.jit's does.
  """
  if fun is None:
    return functools.partial(jit, **jit_kwargs)

  @functools.cache
  def jitted(platform: str):
    return jax.jit(fun, compiler_options=for_platform(platform), **jit_kwargs)

  @functools.wraps(fun)  # call.__wrapped__ is fun
  def call(*args, **kwargs):
    return jitted(jax.default_backend())(*args, **kwargs)

  call.lower = lambda *args, **kwargs: jitted(jax.default_backend()).lower(*args, **kwargs)
  return call
