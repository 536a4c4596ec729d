"""The one training skeleton every brainjax model shares.

`fit` compiles a task's pure `train_step(state, batch, rng, *, axis_name) -> (state, metrics)`
(jit on one device, pmap over several, of one host or many), feeds it shuffled batches,
logs, checkpoints with Orbax (written in the background while training goes on), resumes
from the latest checkpoint, keeps the best one by validation loss, lowers the learning rate
on plateaus, and stops on a non-finite loss with the last good checkpoint intact.
"""
import dataclasses
import functools
import math
import os
import time
from typing import Callable, Optional, Sequence, Tuple, Union

from absl import logging
from flax import jax_utils
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from brainjax.data import pipeline
from brainjax.train import checkpoints
from brainjax.train import compile_options
from brainjax.train import parallel
from brainjax.train import reporting
from brainjax.train import reruns
from brainjax.train import state as train_state


@dataclasses.dataclass(frozen=True)
class Plateau:
  """Reduce-on-plateau bookkeeping (host side, saved with each checkpoint)."""
  best: float = math.inf
  bad_epochs: int = 0
  scale: float = 1.0


# Keys a run draws outside its training steps, which take fold_in(PRNGKey(seed), step): tags
# from the top of fold_in's 32-bit range, which no step reaches. (Another seed will not do:
# seed + 1 is that seed's own key, and past 2**32 - 1 it wraps to seed 0.)
_RESERVED_TAGS = {'sample_grid': 2**32 - 1, 'latent_samples': 2**32 - 2}


def reserved_key(seed: int, purpose: str) -> jax.Array:
  """The key of `purpose` ('sample_grid', 'latent_samples'), one no training step draws."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), _RESERVED_TAGS[purpose])


def plateau_update(plateau, val_loss, factor, patience):
  """Multiplies `scale` by `factor` at the (patience + 1)-th epoch in a row without a new best
  loss (any decrease is one): torch's ReduceLROnPlateau with threshold 0."""
  if val_loss < plateau.best:
    return Plateau(best=val_loss, bad_epochs=0, scale=plateau.scale)
  if plateau.bad_epochs + 1 > patience:
    return Plateau(best=plateau.best, bad_epochs=0, scale=plateau.scale * factor)
  return Plateau(best=plateau.best, bad_epochs=plateau.bad_epochs + 1, scale=plateau.scale)


def _rescore_best(meta, plateau, results):
  """(meta, plateau) with the best checkpoint's loss as this run's `evaluate` measures it.

  A resumed run compares its epochs with the best's loss, which an older version may have
  measured otherwise (BrainCNN's was a clipped log of float32 probabilities, below the
  cross-entropy its logits give): the best would stay at an epoch a later one beats. The
  same code measures the same loss, so a plain resume changes nothing.
  """
  old, new = meta['best_val_loss'], float(results.get('loss', math.nan))
  if not math.isfinite(new) or math.isclose(new, old, rel_tol=1e-6):
    return meta, plateau
  logging.warning('The best checkpoint\'s validation loss measures %.6g now, %.6g when it was '
                  'saved (by an older version): later epochs are compared with %.6g.', new, old,
                  new)
  if plateau.best == old:
    plateau = dataclasses.replace(plateau, best=new)
  return {**meta, 'best_val_loss': new}, plateau


def compile_step(train_step, devices):
  """jit (one device) or pmap (several, on every host) with the state's buffers donated.

  One device gets `compile_options` for its platform; pmap takes no compile
  options (several CPU devices are the tests' fake ones).
  """
  if len(devices) == 1:
    return jax.jit(functools.partial(train_step, axis_name=None), donate_argnums=(0,),
                   compiler_options=compile_options.for_platform(devices[0].platform))
  return jax.pmap(functools.partial(train_step, axis_name=parallel.AXIS),
                  axis_name=parallel.AXIS, devices=devices, donate_argnums=(0,),
                  in_axes=(0, 0, None))


@jax.jit
def copy_on_device(tree):
  """A copy of `tree` where it is (one program, not one per array): kept from the next
  step, which donates the state's buffers."""
  return jax.tree.map(jnp.copy, tree)


def _batch_shapes(arrays, batch_size, num_devices):
  """The shapes and dtypes of one training batch of `arrays` as the step receives it."""
  lead = (batch_size,) if num_devices == 1 else (num_devices, batch_size // num_devices)
  return {k: jax.ShapeDtypeStruct(lead + v.shape[1:], v.dtype) for k, v in arrays.items()}


@jax.jit
def _finite_on_device(tree):
  """Whether every float in `tree` is finite, computed where it is (one scalar comes back)."""
  return jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.inexact)] or [True]))


def _all_finite(host_state):
  # (jnp's issubdtype: numpy's does not count bfloat16 as a float)
  return all(np.isfinite(x).all() for x in jax.tree.leaves(host_state)
             if jnp.issubdtype(np.asarray(x).dtype, jnp.inexact))


def _finite_where_it_is(tree):
  """Whether every float in `tree` (arrays on a device) is finite.

  On a CPU the arrays are read in place (np.asarray of a CPU array is a view, not a copy):
  no program to compile, 0.4-0.65 s for each network's state tree, and the check itself ran
  faster, 0.044 against 0.070 s for BrainCNN's 392 MiB state. Elsewhere one scalar comes
  back from `_finite_on_device`.
  """
  leaves = jax.tree.leaves(tree)
  if all(d.platform == 'cpu' for leaf in leaves if isinstance(leaf, jax.Array)
         for d in leaf.devices()):
    return _all_finite([np.asarray(leaf) for leaf in leaves])
  return bool(_finite_on_device(tree))


class _Saves:
  """A run's two checkpoint folders: the latest states (to resume) and the best one by
  validation loss.

  They are saved together: a new best waits, as a copy on its device, for the next save of
  the latest state, so the best on disk is always the one the latest checkpoint's meta names
  (a resumed run continues from both). A save costs a fraction of a second however small the
  state (Orbax's per-array work, in the background but slowing the steps beside it): on a
  GPU, whose epochs can take tens of milliseconds, one every epoch would set the pace, so
  saves come at most every checkpoint_every_secs, and at the end.
  """

  def __init__(self, config, workdir):
    self.workdir = workdir
    self.every_secs = config.checkpoint_every_secs
    self.latest = checkpoints.manager(os.path.join(workdir, 'checkpoints'),
                                      config.keep_checkpoints)
    self.best = checkpoints.manager(os.path.join(workdir, 'best'), 1)
    self.last_step = self.latest.latest_step()  # (resume from it; None: none yet)
    self.last_time = time.monotonic()
    self.pending_best = None  # (step, state on its device, its meta, the run's meta then)

  def due(self, step, total_steps):
    due = step == total_steps or time.monotonic() - self.last_time >= self.every_secs
    if jax.process_count() > 1:  # a save is collective: every host takes process 0's decision
      due = bool(multihost_utils.broadcast_one_to_all(np.bool_(due)))
    return due

  def hold_best(self, step, trained, best_meta, run_meta):
    """Keeps a new best until the next save, as a copy on its device (the next train step
    donates the trained state's buffers). A state with non-finite values (finite parameters
    can validate at a finite loss beside an overflowed optimizer state) stops the run instead:
    it must never be saved, as the best or as the last good state."""
    if not _finite_where_it_is(trained):
      raise self.non_finite(f'parameters or optimizer state at step {step}')
    self.pending_best = (step, copy_on_device(trained), best_meta, run_meta)

  def save(self, step, host_state, run_meta):
    """Starts saving the latest state (and the pending best): refused for a non-finite one."""
    # A finite loss can come with a non-finite update (e.g. the gradient of sqrt at 0): such
    # a state is never saved, or every rerun would resume into it.
    if not _all_finite(host_state):
      raise self.non_finite(f'parameters or optimizer state at step {step}')
    if self.pending_best is not None:
      self._save_pending_best()
    checkpoints.save(self.latest, step, host_state, run_meta)
    self.last_step, self.last_time = step, time.monotonic()

  def _save_pending_best(self):
    """Saves the held best to best/, committed before it returns: the two managers commit
    from threads of their own, and the latest checkpoint, saved next, must never commit
    before the best its meta names. Returns its step, its host copy and the run's meta when
    it was found."""
    best_step, best_state, best_meta, best_run_meta = self.pending_best
    host_best = jax.tree.map(np.asarray, best_state)
    # best/ can hold a later step than this one only after a kill between the two commits of
    # a save (best/ first): this run retrains that step, and Orbax skips a save of a step at
    # or before its latest, so that later best goes.
    for stale in [s for s in self.best.all_steps() if s >= best_step]:
      self.best.delete(stale)
    checkpoints.save(self.best, best_step, host_best, best_meta)
    checkpoints.wait(self.best)
    self.pending_best = None
    return best_step, host_best, best_run_meta

  def non_finite(self, what):
    """The FloatingPointError that stops the run, once the last good state is saved.

    A best found since the last save is not lost with the run: it is written as the best and
    as the latest checkpoint (so the pair stays consistent, and a rerun resumes from the last
    good state, not from an older one or from scratch).
    """
    if self.pending_best is not None:
      best_step, host_best, best_run_meta = self._save_pending_best()
      checkpoints.save(self.latest, best_step, host_best, best_run_meta)
      self.last_step = best_step
    kept = (f'The last good checkpoint (step {self.last_step}) is kept in '
            f'{self.workdir}/checkpoints.' if self.last_step is not None
            else 'No checkpoint had been saved yet.')
    return FloatingPointError(f'non-finite {what}; stopped. {kept}')

  def close(self):
    """Waits for the saves in flight (a checkpoint that a message names is complete)."""
    try:
      checkpoints.close(self.latest)
    finally:
      checkpoints.close(self.best)


def _data_keys(data_key: Union[str, Sequence[str], None]) -> Tuple[str, ...]:
  """fit's data_key as (its key, older forms of it); () for none."""
  return (data_key,) if isinstance(data_key, str) else tuple(data_key or ())


def check_data_key(workdir, meta, data_key: Union[str, Sequence[str], None]) -> None:
  """reruns.RerunRefused if a checkpoint's meta records other training data than `data_key`
  (see `fit`) names; checkpoints without a key pass."""
  if None not in (data_key, meta.get('data_key')) and meta['data_key'] not in _data_keys(data_key):
    raise reruns.RerunRefused(
        f'{workdir} was trained on other data than it reads now, or validated on other slices '
        '(a synthetic export redone since with other images, or slices added to, removed from '
        'or replaced in the data folder): train on these in a new --workdir')


def check_resume(config, workdir, num_examples: int,
                 data_key: Union[str, Sequence[str], None] = None) -> None:
  """The ValueError `fit` would raise before training, raised before anything is written.

  A task calls it once it knows its training data, so that a run `fit` refuses leaves its
  workdir as it was (the results of the run it holds included): the run-length fields, a
  batch the devices cannot split or the data cannot fill, and, as reruns.RerunRefused
  (its caller puts config.json back), a checkpoint trained on other data (see `fit`'s
  data_key) or one trained further than num_epochs reach.
  """
  # (launch.py checks these, configs/common.py's check_values, before writing config.json)
  for field in ('num_epochs', 'batch_size', 'log_every_steps', 'keep_checkpoints'):
    if config[field] < 1:
      raise ValueError(f'{field}={config[field]}: it must be at least 1')
  parallel.check_batch_split(config)
  latest = checkpoints.latest_meta(workdir)
  step = 0
  if latest is not None:
    step, meta = latest
    check_data_key(workdir, meta, data_key)
  # The best checkpoint and the latest are written one after the other: a run killed between
  # the two commits holds a best of a later step than its latest. It has trained that far
  # (a shorter rerun would end before that step, its best/ still holding the later model).
  check_trained_steps(config, workdir, num_examples,
                      max(step, checkpoints.best_step(workdir) or 0))


def check_trained_steps(config, workdir, num_examples: int, step: int) -> None:
  """reruns.RerunRefused if a run that has trained `step` steps asks for fewer epochs (its
  config.json would record a length it has passed)."""
  per_epoch = pipeline.steps_per_epoch(num_examples, config.batch_size)
  if step > per_epoch * config.num_epochs:
    raise reruns.RerunRefused(
        f'{workdir} has trained {step} steps ({per_epoch} an epoch), more than '
        f'num_epochs={config.num_epochs} give: rerun with num_epochs >= '
        f'{-(-step // per_epoch)}, or choose another --workdir')


class _Placement:
  """Where the trained state lives: replicated on this host's devices of a data-parallel
  run, or on the one device (placed uncommitted on the default device, which is devices[0]
  in one process, so that `evaluate`'s jitted functions compile once for the device state
  and host arrays).

  The trained state stays there: `evaluate` runs on it in place, a new best is kept as a
  copy beside it, and only a save (at most every checkpoint_every_secs) copies it to the
  host. On a GPU a host copy of the paper BrainCNN's state (392 MiB) takes tens of
  milliseconds, against about 100 ms for an epoch's steps on an H100.
  """

  def __init__(self, devices):
    self.multi = len(devices) > 1
    self.host_devices = parallel.this_host(devices)

  def to_device(self, state):
    return jax_utils.replicate(state, self.host_devices) if self.multi else jax.device_put(state)

  def trained(self, state):
    """The trained state as one model (the first replica of a data-parallel run)."""
    return parallel.first_replica(state) if self.multi else state

  def to_host(self, state):
    return jax.tree.map(np.asarray, self.trained(state))

  def beside_trained(self, state):
    """A host state put where `trained` leaves the trained one, so `evaluate` compiles once."""
    return jax.device_put(state, self.host_devices[0]) if self.multi else state


def _resume(saves, state, evaluate, total_steps, place):
  """(state, meta, plateau): the latest checkpoint's, or `state` and fresh ones; a resumed run
  with a best checkpoint measures its validation loss anew (see _rescore_best)."""
  meta = {'plateau': dataclasses.asdict(Plateau()), 'best_val_loss': None}
  if saves.last_step is not None:  # (its data and length: check_resume)
    state, meta = checkpoints.restore(saves.latest, state)
    logging.info('Resuming from %s/checkpoints at step %d.', saves.workdir, int(state.step))
  plateau = Plateau(**meta['plateau'])
  # A run killed between the two commits of a save holds a best of a later step than its
  # latest checkpoint (the best commits first): a model this run will train again, and not
  # the best its resumed meta names, so not one to measure anew. (The rerun's next best
  # replaces it: at that step, the same model up to float rounding where the rerun's
  # arithmetic differs, e.g. on another device count.)
  if (evaluate is not None and meta['best_val_loss'] is not None
      and int(state.step) < total_steps
      and saves.best.latest_step() is not None and saves.best.latest_step() <= int(state.step)):
    best = place.beside_trained(checkpoints.restore(saves.best, state)[0])
    meta, plateau = _rescore_best(meta, plateau, evaluate(best))
  return state, meta, plateau


def _after_validation(config, meta, plateau, val_loss, epoch):
  """(meta, plateau, the new best's record or None) once an epoch validated at val_loss: a
  finite loss below the best so far is the new best; it drives reduce-on-plateau when config
  has `plateau_factor`."""
  new_best = None
  if math.isfinite(val_loss) and (meta['best_val_loss'] is None
                                  or val_loss < meta['best_val_loss']):
    meta = {**meta, 'best_val_loss': val_loss}
    new_best = {'val_loss': val_loss, 'epoch': epoch}
  if 'plateau_factor' in config:
    plateau = plateau_update(plateau, val_loss, config.plateau_factor, config.plateau_patience)
  return meta, plateau, new_best


def _compile(train_step, devices, state, train_arrays, batch_size, rng):
  """The step compiled ahead of the first step, so that images_per_s counts steps, not
  compilation; not by several processes, whose compiled pmap would take global arrays, not
  each host's part (pmap compiles it at the first step there)."""
  compiled_step = compile_step(train_step, devices)
  if jax.process_count() > 1:
    return compiled_step
  compile_start = time.perf_counter()
  compiled_step = compiled_step.lower(
      state, _batch_shapes(train_arrays, batch_size, len(devices)), rng).compile()
  logging.info('Compiled the train step in %.1f s.', time.perf_counter() - compile_start)
  return compiled_step


def fit(config, workdir, state, train_step, train_arrays, *,
        data_key: Union[str, Sequence[str], None] = None,
        evaluate: Optional[Callable] = None, hooks: Sequence[Callable] = ()):
  """Trains `state` for config.num_epochs over `train_arrays` (a dict of equal-length arrays).

  evaluate(state) -> dict, called after every epoch on the trained state where it is (on the
  first device of a data-parallel run; it must not keep it past its call): its 'loss' (if
  any; the least finite one) picks the best checkpoint (written to workdir/best with the next
  save of the latest one, at most every config.checkpoint_every_secs and at the end) and
  drives reduce-on-plateau when config has `plateau_factor`; its other entries are logged.
  `data_key` (e.g. `datasets.training_key`) names the training data, or is (its key, older
  forms of it): the key is kept with each checkpoint, and a resume whose checkpoint holds
  another is a ValueError (checkpoints without one resume).
  A non-finite loss, or non-finite parameters or optimizer state at a save or a new best, stop
  the run (FloatingPointError) with the last good state saved.
  `hooks` are called as hook(step) after every step (tests use one to interrupt a run).
  Returns (final state, left on its (first) device; summary): the last logged train_* and
  val_* values (kept in each checkpoint, so a resumed or finished run reports them too),
  steps, best_val_loss and learning_rate.
  """
  num_examples = len(next(iter(train_arrays.values())))
  check_resume(config, workdir, num_examples, data_key)
  data_keys = _data_keys(data_key)
  devices = parallel.train_devices(config.num_devices)  # every host's
  per_epoch = pipeline.steps_per_epoch(num_examples, config.batch_size)
  total_steps = per_epoch * config.num_epochs
  place = _Placement(devices)
  saves = _Saves(config, workdir)
  state, meta, plateau = _resume(saves, state, evaluate, total_steps, place)
  meta['data_key'] = data_keys[0] if data_keys else None
  summary = dict(meta.get('summary', {}))  # (none yet, or a checkpoint of an older version)
  base_lr = config.learning_rate
  step = int(state.step)

  def run_meta():
    return {**meta, 'plateau': dataclasses.asdict(plateau), 'summary': dict(summary)}

  def save(host_state):
    # Every scalar logged up to this step is on disk before the checkpoint can be: a run
    # killed after it resumes from it and logs only the steps after it again.
    writer.flush()
    saves.save(step, host_state, run_meta())

  if plateau.scale != 1.0:
    state = train_state.set_learning_rate(state, base_lr * plateau.scale)
  state = place.to_device(state)
  base_rng = jax.random.PRNGKey(config.seed)
  compiled_step = None  # (a finished run trains no step)
  if step < total_steps:
    compiled_step = _compile(train_step, devices, state, train_arrays, config.batch_size,
                             base_rng)
    if parallel.is_first_host():
      # The run trains again (more epochs, or an interrupted rerun): until its task writes
      # metrics.json anew, the old one would describe another model than best/ holds
      # (predict and the study read it as the run's).
      reporting.remove_metrics_json(workdir)
  if step < total_steps:
    # (from step 1: a rerun after a Ctrl-C before the first checkpoint starts over)
    logging.info('Training steps %d to %d (%d epochs of %d steps) at global batch %d on %d '
                 'device(s) of %d process(es).', step + 1, total_steps, config.num_epochs,
                 per_epoch, config.batch_size, len(devices), jax.process_count())
  else:
    logging.info('Nothing left to train: the run is at its last step (%d).', total_steps)

  # (from step + 1: what an earlier, killed run logged after the checkpoint this run resumes
  # from, it logs again; TensorBoard shows this run's)
  # (none for a run with nothing left to train: a new event file would count as a change to its
  # results, see reruns.untouched_since)
  writer = reporting.summary_writer(workdir, write=parallel.is_first_host() and step < total_steps,
                                    purge_step=step + 1)
  # `timed` counts the steps images_per_s is measured over: from the process's second step on
  # (its first pays one-off costs, its first execution and the compilation of fold_in and of the
  # metrics' sum: a resumed run that trained one log interval reported 97 img/s, 224 steady).
  sums, count, timed, timer, first_step_s = None, 0, 0, time.perf_counter(), None
  # Saves run in the background. Every exit (the end, a non-finite loss, an interrupt)
  # waits for them, so a checkpoint that a message names is complete on disk. (An interrupt
  # that arrives during that wait cuts the save short: Orbax leaves it uncommitted, and the
  # resumed run's manager deletes its temporary folder.)
  try:
    while step < total_steps:
      epoch, start = divmod(step, per_epoch)
      batches = pipeline.train_batches(train_arrays, config.batch_size, config.seed, epoch, start)
      for batch in batches:
        if place.multi:  # each host feeds its devices their rows of the global batch
          batch = parallel.shard(parallel.host_rows(batch, devices), len(place.host_devices))
        state, metrics = compiled_step(state, batch, jax.random.fold_in(base_rng, step))
        step += 1
        metrics = jax.tree.map(lambda m: m[0], metrics) if place.multi else metrics
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        count += 1
        for hook in hooks:
          hook(step)
        if first_step_s is None:
          jax.block_until_ready(sums)
          first_step_s, timer = time.perf_counter() - timer, time.perf_counter()
        else:
          timed += 1
        end_of_epoch = step % per_epoch == 0
        if step % config.log_every_steps == 0 or end_of_epoch:
          totals = {k: float(v) / count for k, v in jax.device_get(sums).items()}
          if not all(math.isfinite(v) for v in totals.values()):
            raise saves.non_finite(f'loss by step {step} ({totals})')
          rate = timed / (time.perf_counter() - timer) if timed else 1 / first_step_s
          totals['images_per_s'] = rate * config.batch_size
          logging.info('step %d/%d epoch %d: %s', step, total_steps, epoch + 1,
                       ', '.join(f'{k}={v:.4g}' for k, v in totals.items()))
          for k, v in totals.items():
            writer.add_scalar(f'train/{k}', v, step)
          summary.update({f'train_{k}': v for k, v in totals.items()})
          sums, count, timed, timer = None, 0, 0, time.perf_counter()
        if end_of_epoch:
          break
        # (at a log step: its loss was just checked finite, above)
        if step % config.log_every_steps == 0 and saves.due(step, total_steps):
          save(place.to_host(state))
          timer = time.perf_counter()  # (as after an epoch's saves, below)

      if evaluate is not None:
        trained = place.trained(state)  # (the next step donates its buffers)
        results = evaluate(trained)
        logging.info('epoch %d eval: %s', epoch + 1,
                     ', '.join(f'{k}={v:.4g}' for k, v in results.items()))
        for k, v in results.items():
          writer.add_scalar(f'val/{k}', v, step)
        summary.update({f'val_{k}': float(v) for k, v in results.items()})
        if 'loss' in results:
          scale = plateau.scale
          meta, plateau, new_best = _after_validation(config, meta, plateau,
                                                      float(results['loss']), epoch + 1)
          if plateau.scale != scale:
            logging.info('Validation loss plateaued: learning rate -> %g',
                         base_lr * plateau.scale)
            state = place.to_device(
                train_state.set_learning_rate(trained, base_lr * plateau.scale))
          if new_best is not None:
            saves.hold_best(step, trained, new_best, run_meta())
      if saves.due(step, total_steps):
        save(place.to_host(state))
      timer = time.perf_counter()  # images_per_s counts train steps, not eval and saves
  finally:
    try:
      saves.close()  # (which raises a save's failure, e.g. a full disk)
    finally:
      writer.close()

  best_val_loss = meta['best_val_loss']
  summary.update(steps=step, best_val_loss=math.nan if best_val_loss is None else best_val_loss,
                 learning_rate=base_lr * plateau.scale)
  return place.trained(state), summary
