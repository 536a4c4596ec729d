"""The cores and memory this process may use, and threads, one per core, for independent
NumPy/SciPy pieces (the anomaly rules'; preprocessing sizes its worker processes with
num_workers).

The rules' heavy kernels (comparisons, sorts, bincount, SciPy's sparse products
and graph search, jitted JAX calls) release the GIL, so independent pieces (row
chunks, thresholds, image chunks) run side by side in threads: 1.7-2.3x on the
2-core machine here. Results come back in input order, so they do not depend on
the number of threads.
"""
import concurrent.futures
import os
import re
from typing import Callable, Iterable, List, TypeVar

T = TypeVar('T')
R = TypeVar('R')

# Values per row chunk: a few MB, cache-sized, and enough chunks to share out.
CHUNK_ELEMENTS = 1 << 20
# At most this many threads: each global-KMeans threshold or DBSCAN chunk in flight
# holds ~100 MB on 3000 slices.
MAX_WORKERS = 8


def num_workers() -> int:
  """The cores this process may run on, at most MAX_WORKERS."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, min(MAX_WORKERS, cores))


# cgroup memory limits, found where /proc/self/mountinfo says the hierarchies are mounted (the
# usual places where it cannot be read). The files at a mount's root are a container's own (with
# its own cgroup namespace); /proc/self/cgroup names this process's group within the hierarchy
# (a systemd unit, a SLURM job, a container without a namespace), whose limit and its parents'
# bind too.
MOUNTINFO = '/proc/self/mountinfo'
PROC_CGROUP = '/proc/self/cgroup'
_USUAL_MOUNTS = (('v2', '/sys/fs/cgroup', '/'), ('v1', '/sys/fs/cgroup/memory', '/'))
_LIMIT_FILE = {'v2': 'memory.max', 'v1': 'memory.limit_in_bytes'}
_NO_LIMIT = 1 << 60  # v2 writes 'max' where there is none, v1 a number near 2**63


def _unescape(field: str) -> str:
  """A mountinfo path field: spaces, tabs, newlines and backslashes are octal escapes."""
  return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), field)


def _cgroup_mounts():
  """(version, mount point, hierarchy root) of the cgroup v2 and v1 memory hierarchies."""
  mounts = []
  try:
    with open(MOUNTINFO) as f:
      for line in f:  # 'id parent major:minor root mount_point options [tags] - fstype src super'
        fields = line.split()
        tail = fields[fields.index('-') + 1:]
        if tail[0] == 'cgroup2' or (tail[0] == 'cgroup' and 'memory' in tail[2].split(',')):
          mounts.append(('v2' if tail[0] == 'cgroup2' else 'v1', _unescape(fields[4]),
                         _unescape(fields[3])))
  except (OSError, ValueError, IndexError):
    return list(_USUAL_MOUNTS)
  return mounts


def _cgroup_paths():
  """{version: this process's group path} from /proc/self/cgroup ('/' where unknown)."""
  paths = {'v2': '/', 'v1': '/'}
  try:
    with open(PROC_CGROUP) as f:
      for line in f:  # 'id:controllers:/path'
        _, controllers, path = line.rstrip('\n').split(':', 2)
        if controllers == '':
          paths['v2'] = path
        elif 'memory' in controllers.split(','):
          paths['v1'] = path
  except (OSError, ValueError):
    pass
  return paths


def _cgroup_limit_files():
  """The memory limit files of this process's cgroup and of those above it, in each hierarchy."""
  paths = _cgroup_paths()
  files = []
  for version, mount_point, root in _cgroup_mounts():
    path = paths[version]
    if root != '/' and (path + '/').startswith(root.rstrip('/') + '/'):
      path = path[len(root.rstrip('/')):]  # (the mount shows the hierarchy from root down)
    parts = [p for p in path.split('/') if p]
    for depth in range(len(parts), -1, -1):
      files.append(os.path.join(mount_point, *parts[:depth], _LIMIT_FILE[version]))
  return files


def memory_bytes() -> int:
  """The memory this process may use in bytes: the machine's physical memory, or a lower
  cgroup limit (a container's, a job's) where one is set (0 where neither is known)."""
  try:
    physical = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (AttributeError, ValueError, OSError):  # (not a POSIX system)
    physical = 0
  limits = [physical] if physical > 0 else []
  for path in _cgroup_limit_files():
    try:
      with open(path) as f:
        text = f.read().strip()
    except OSError:  # (no such cgroup here)
      continue
    if text.isdigit() and 0 < int(text) < _NO_LIMIT:
      limits.append(int(text))
  return min(limits, default=0)


def check_fits_in_memory(needed: int, what: str, advice: str, memory: int = 0,
                         where: str = 'memory this process may use') -> None:
  """A ValueError if `what` needs more than `memory` bytes (default: memory_bytes(); nothing
  is checked where that is unknown): settings that would fill the memory hours in are refused
  before the run begins. `needed` is a lower bound, so what passes may still not fit."""
  memory = memory or memory_bytes()
  if memory and needed > memory:
    raise ValueError(f'{what} need {needed / 2**30:.4g} GiB, more than the '
                     f'{memory / 2**30:.4g} GiB of {where}: {advice}')


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> List[R]:
  """[fn(item) for item in items], one thread per core; in order, exceptions re-raised."""
  items = list(items)
  workers = min(num_workers(), len(items))
  if workers <= 1:
    return [fn(item) for item in items]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(fn, items))


def row_chunks(num_rows: int, row_size: int) -> List[slice]:
  """Consecutive row slices of about CHUNK_ELEMENTS values (at least one row each)."""
  step = max(1, CHUNK_ELEMENTS // max(1, row_size))
  return [slice(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]
