"""XLA:CPU compile options: Eigen's convolutions for networks, quick compiles for small programs.

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
15.7 s.

`QUICK_COMPILE` is for small programs whose compile time is a large part of their
cost, like the single-image KMeans rule's Lloyd loops: XLA:CPU's older fusion
emitters, which skip the MLIR pipeline. Same process, after malloc tuning: that
rule's program compiled in 0.42-0.43 s against 0.65-0.66 s and ran as fast (3000
slices in 0.43-0.44 s against 0.44-0.48 s); BrainCNN's train step compiled and ran
its first step in 2.7 s against 4.1 s, but then ran 10% slower (788 against 717 ms),
so the networks keep the default emitters. jaxlib 0.11.2 no longer has the option:
there `for_platform` logs that once and the rule compiles with XLA's defaults.

`LIGHT_OPTIMIZATION` (LLVM at -O1, not -O3) is for programs that run once: a network's
initialisation (`state.init_variables`), some 200 elementwise fusions of random draws (its
truncated normals' erf_inv) that XLA spends seconds optimising for a run of milliseconds.
Same process, the quick start's VAE: 3.0-4.1 s against 12.0-16.0 s (3.1 against 8.3-8.7 s
of CPU), the same values bit for bit (every task's network at its default, smoke and paper
sizes). The generators' samplers (`EIGEN_CONVOLUTIONS_LIGHT`; their convolutions are Eigen's
either way) compiled in 0.5-0.8 s against 0.9-1.7 s, ran as fast (VAE default: 1500 samples
in batches of 100 1.46-1.49 s against 1.74-1.80 s; other sizes within noise) and drew the
same samples bit for bit (VAE and GAN at their default, smoke and paper sizes). LLVM at -O1
vectorises and unrolls less, and XLA allows no reassociation of float operations at any
level, so the values are the same.

`loop.compile_step` passes `for_platform` of its devices to the train step's jit;
the forward passes (evaluation, sampling, reconstruction error) are jitted with
`jit`, which picks the default backend's options when called.
"""
import functools
from typing import Any, Callable, Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp

# XLA's default list (jaxlib 0.10.2) without LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
EIGEN_CONVOLUTIONS = {'xla_cpu_experimental_ynn_fusion_type':
                      'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
QUICK_COMPILE = {'xla_cpu_use_fusion_emitters': False}
# For programs that run once, like a network's initialisation (`state.init_variables`).
LIGHT_OPTIMIZATION = {'xla_backend_optimization_level': 1}
# For forward passes run a few times per run, like the generators' samplers.
EIGEN_CONVOLUTIONS_LIGHT = {**EIGEN_CONVOLUTIONS, **LIGHT_OPTIMIZATION}


def for_platform(platform: str,
                 cpu_options: Dict[str, Any] = EIGEN_CONVOLUTIONS) -> Optional[Dict[str, Any]]:
  """`compiler_options` for a program compiled for `platform` (None: XLA's defaults).

  Only 'cpu' gets options, and only where this jaxlib accepts them: they are
  experimental, and an XLA that renamed one keeps its defaults (with a warning).
  """
  if platform != 'cpu' or not _cpu_options_accepted(tuple(sorted(cpu_options.items()))):
    return None
  return dict(cpu_options)


@functools.cache
def _cpu_options_accepted(options) -> bool:
  cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  try:
    jax.jit(jnp.negative, compiler_options=dict(options)).lower(
        jax.ShapeDtypeStruct((), jnp.float32, sharding=cpu)).compile()
  except jax.errors.JaxRuntimeError as error:
    logging.warning('XLA:CPU keeps its defaults (not %s): %s', dict(options), error)
    return False
  return True


def jit(fun: Optional[Callable] = None, /, *,
        cpu_options: Dict[str, Any] = EIGEN_CONVOLUTIONS, **jit_kwargs):
  """`jax.jit(fun, **jit_kwargs)` compiled with the default backend's `for_platform` options.

  Usable as `@jit(static_argnames=...)`. The backend is looked up when called, not
  at import (a multi-host run creates it in `jax.distributed.initialize()`); one
  compiled function per platform. `.lower(...)` lowers as jax.jit's does; `.cpu_options`
  are the options it was given.
  """
  if fun is None:
    return functools.partial(jit, cpu_options=cpu_options, **jit_kwargs)

  @functools.cache
  def jitted(platform: str):
    return jax.jit(fun, compiler_options=for_platform(platform, cpu_options), **jit_kwargs)

  @functools.wraps(fun)  # call.__wrapped__ is fun
  def call(*args, **kwargs):
    return jitted(jax.default_backend())(*args, **kwargs)

  call.lower = lambda *args, **kwargs: jitted(jax.default_backend()).lower(*args, **kwargs)
  call.cpu_options = cpu_options
  return call
