"""Host memory: keep freed blocks in the process (glibc), so XLA:CPU steps stop page-faulting.

XLA:CPU allocates each execution's buffers with malloc; glibc serves blocks over
32 MiB (BrainCNN's first activations are 128 MiB at batch 64) with a fresh mmap,
whose every 4 KiB page then faults and is zeroed by the kernel on first touch, and
unmaps them on free, so every step pays it again: about half of a BrainCNN step on
the 2-core CPU here. One arena, no mmap and no trimming let freed blocks be reused;
the price is that the process keeps its peak memory until it exits.
"""
import ctypes

# glibc mallopt parameters (M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD, M_TOP_PAD) and values.
_MALLOPT = {'arena_max': (-8, 1), 'mmap_max': (-4, 0), 'trim_threshold': (-1, 2**31 - 1),
            'top_pad': (-2, 64 << 20)}
# The same settings for another process, through its environment.
GLIBC_TUNABLES = ':'.join(f'glibc.malloc.{k}={v}' for k, (_, v) in _MALLOPT.items())


def keep_freed_memory() -> bool:
  """Applies the settings to this process; whether glibc accepted them (False elsewhere,
  e.g. macOS or musl). Call before JAX's first computation: its worker threads must
  not have their own arenas yet."""
  try:
    libc = ctypes.CDLL('libc.so.6')
    return all(libc.mallopt(param, value) == 1 for param, value in _MALLOPT.values())
  except (OSError, AttributeError):
    return False
