"""Orbax checkpoints: the latest few for resuming, and the best one by validation loss.

The wrappers only; when a run saves, and which checkpoint is its best, is `loop._Saves`."""
import contextlib
import errno
import os
import re
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(directory, max_to_keep, create=True):
  """A CheckpointManager for `directory` (created if needed, and `create`) keeping the newest
  `max_to_keep`."""
  # Hosts meet at barriers named after the step; the directory's name in them keeps the
  # latest and the best checkpoint of one step, saved together, from sharing one.
  processes = ocp.options.MultiprocessingOptions(
      barrier_sync_key_prefix=os.path.basename(os.path.abspath(directory)))
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      # A creating manager is the training run's own: it deletes the temporary folder of a
      # save a kill cut short (as large as the state). One that only reads must not: another
      # process may be saving there (predict reading a run still training).
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                           cleanup_tmp_directories=create,
                                           multiprocessing_options=processes))


# Failures for want of room: a full disk, a full quota, the file size limit.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _os_error_code(error) -> Optional[int]:
  """The system's error code of a failed write: an OSError's, or the one that tensorstore
  (which writes Orbax's arrays) puts in its ValueError's message: "...: No space left on
  device [os_error_code='28']". None if there is none."""
  if isinstance(error, OSError):
    return error.errno
  if isinstance(error, ValueError):
    found = re.search(r"\[os_error_code='?(\d+)'?\]", str(error))
    return int(found.group(1)) if found else None
  return None


def out_of_room(error) -> bool:
  """Whether `error` is a write that failed for want of room (see _NO_ROOM)."""
  return _os_error_code(error) in _NO_ROOM


@contextlib.contextmanager
def _writing(mngr):
  """A save in mngr's folder that finds no room to write (a full disk or quota) is one OSError
  naming the folder and the reason: Orbax's is tensorstore's paragraph about the file of one
  array in a temporary folder (the original is its __cause__). Other errors pass unchanged."""
  try:
    yield
  except (OSError, ValueError) as error:
    code = _os_error_code(error)
    if code not in _NO_ROOM:
      raise
    raise OSError(f'cannot write a checkpoint in {mngr.directory}: {os.strerror(code)}') from error


def save(mngr, step, state, meta):
  """Starts saving `state` (a host pytree) with a small JSON `meta` dict.

  Orbax writes it in the background and commits it atomically when done; the next
  save, `wait(mngr)` or `close(mngr)` waits for it (and raises its failure). Until then the
  arrays of `state` must not change (JAX keeps a device buffer that a NumPy view
  still reads out of donation).
  """
  with _writing(mngr):
    mngr.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def wait(mngr):
  """Waits for mngr's save in flight to be committed."""
  with _writing(mngr):
    mngr.wait_until_finished()


def close(mngr):
  """Waits for mngr's save in flight, and closes mngr."""
  with _writing(mngr):
    mngr.close()


def restore(mngr, state_template, step=None):
  """(state, meta) of `step` (default: the latest), shaped like `state_template`.

  The state is put on a device once, so the jitted functions that then run on it batch after
  batch do not copy it in at each call, and placed as the template is, since jit compiles a
  program per placement: committed to the one device the template's arrays are committed to
  (a data-parallel run's trained state, on its first device), else uncommitted on the default
  device (which also serves host arrays).
  """
  step = mngr.latest_step() if step is None else step
  # Shapes without a sharding restore NumPy arrays, wherever the template lives.
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state_template)
  restored = _read(mngr, step, ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  return jax.device_put(restored['state'], _committed_device(state_template)), restored['meta']


def _committed_device(tree):
  """The one device that `tree`'s arrays are committed to, or None."""
  leaves = jax.tree.leaves(tree)
  if leaves and all(isinstance(x, jax.Array) and x.committed for x in leaves):
    devices = set.union(*(x.devices() for x in leaves))
    if len(devices) == 1:
      return devices.pop()
  return None


def _read(mngr, step, args):
  """mngr.restore(step, args), an unreadable checkpoint one ValueError that names its folder
  (Orbax's own is a JSON parser's or tensorstore's message, without the path or a remedy)."""
  try:
    return mngr.restore(step, args=args)
  except (ValueError, OSError) as error:
    folder = os.path.join(str(mngr.directory), str(step))
    reason = ' '.join(str(error).split())
    reason = reason if len(reason) <= 200 else reason[:200] + '...'
    # (best/ keeps one checkpoint: none before it to fall back on)
    remedy = ('train in a new --workdir' if os.path.basename(str(mngr.directory)) == 'best' else
              'move that folder out (a rerun resumes from the checkpoint before it), or train '
              'in a new --workdir')
    raise ValueError(f'cannot read the checkpoint {folder}, damaged or written by another '
                     f'version ({type(error).__name__}: {reason}): {remedy}') from error


def holds_checkpoint(workdir):
  """Whether workdir/checkpoints or workdir/best holds a committed checkpoint: a folder named
  by its step (Orbax commits one by renaming its temporary folder to that). Lists folders
  only, no manager: one host may call it alone."""
  for name in ('checkpoints', 'best'):
    folder = os.path.join(workdir, name)
    if os.path.isdir(folder) and any(e.isdigit() and os.path.isdir(os.path.join(folder, e))
                                     for e in os.listdir(folder)):
      return True
  return False


def latest_meta(workdir):
  """(step, meta) of the latest checkpoint in workdir/checkpoints, or None; reads no arrays
  and creates nothing.

  (Every host takes the same path through it, whether the folder exists yet or not, as a
  creating manager would meet the others at a barrier.)
  """
  mngr = manager(os.path.join(workdir, 'checkpoints'), 1, create=False)
  try:
    step = mngr.latest_step()
    if step is None:
      return None
    return step, _read(mngr, step, ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  finally:
    mngr.close()


def best_step(workdir):
  """The step of the best checkpoint in workdir/best, or None; reads no arrays and creates
  nothing (as `latest_meta`)."""
  mngr = manager(os.path.join(workdir, 'best'), 1, create=False)
  try:
    return mngr.latest_step()
  finally:
    mngr.close()


def restore_best(workdir, state_template):
  """The best-validation-loss state saved by `loop.fit` in `workdir` (which it leaves as it
  is: predict reads a run it must not change)."""
  mngr = manager(os.path.join(workdir, 'best'), 1, create=False)
  try:
    if mngr.latest_step() is None:
      raise FileNotFoundError(f'no best checkpoint in {workdir}/best: the run has not been '
                              'trained, or none of its validation losses was finite')
    return restore(mngr, state_template)[0]
  finally:
    mngr.close()


def restore_latest(workdir, state_template):
  """(state, meta) of the newest checkpoint `loop.fit` saved in `workdir` (which it leaves as
  it is)."""
  mngr = manager(os.path.join(workdir, 'checkpoints'), 1, create=False)
  try:
    if mngr.latest_step() is None:
      raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints: has this run been '
                              'trained?')
    return restore(mngr, state_template)
  finally:
    mngr.close()
