"""XLA compile options for the convolution networks' heavy programs: Eigen's convolutions on CPU.

XLA:CPU (jaxlib 0.10.2) gives three kinds of work to YNNPACK by default
(`xla_cpu_experimental_ynn_fusion_type`: single dots, single convolutions and
reductions), and YNNPACK runs each convolution on one thread. With convolutions
left out of that list, XLA runs them through Eigen, which uses every core: on the
2-core machine here a batch-64 3x3 conv 32->64 at 64 px took 106 ms in YNNPACK
and 50 ms in Eigen. YNNPACK keeps the dots and reductions, where it is faster (all
three off: BrainCNN's step 2.4x slower). Train steps with this option, same
process: GAN 15% less time, VAE 9%, BrainCNN and BrainCVAE within noise (their
single-threaded convolutions overlap other work); the reconstruction error of
3000 slices 14.0 s against 15.7 s (README, Performance).
"""
import functools
from typing import Dict, Optional

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
