"""Benchmark: the product's jit-compiled train steps and anomaly stage, against the PyTorch peer.

  python -m brainjax.bench --models cnn,cvae,vae,gan --batch 64 --steps 5 \
      --peer --torch-python /path/to/torch-venv/bin/python

prints one JSON object with the peer's shape, `{"cnn": {"img_per_s": ..., "ms_per_step": ...},
...}`, plus `recon_error_3000_s`, `anomaly_grid_search_s`, `anomaly_loop_baseline`,
`anomaly_grid_search_speedup` (the four searches against the loop's four),
`peak_memory_mb` (this process's peak over the whole run, every model and the anomaly
stage; the peer reports its own per model), `peak_device_memory_mb` on an accelerator,
`device` and `threads`.
Each model also gets `flops_per_step` (XLA's count of what our program executes: fewer
than the network's textbook count where our form is cheaper, e.g. the CVAE's DFT transposed
convolutions and the decoders' 2x2 phase kernels) and `tflop_per_s`, and on a GPU in
`PEAK_TFLOPS` the fraction of the chip's datasheet peak (`peak_fraction`). With `--peer`
(or `--compare peer.json`, a saved output of ../shared/bench/torch_reference.py) each
model also gets `ratio_vs_torch`, JAX images/s over the peer's, and the peer's own numbers
are kept under "torch".

What is timed. The tasks' own train steps (brainjax/tasks/), built from their configs with
the `paper` preset (the study's full widths, the networks of the peer) and compiled exactly
as training compiles them (`loop.compile_step`: jit, state donated). One compile + warm-up
step, then `--steps` steps, each timed to `block_until_ready`; the median is reported.

Fairness. `--peer` runs the peer in a subprocess, model by model, right before the JAX
steps of the same model (so both see the same load on a shared machine), through a small
wrapper that imports the peer's own `make_step` and times it the same way (warm-up step,
median of per-step times; its mean, the statistic the peer script prints, is kept too).
`--threads N` pins this process, and with it the peer subprocess, to N CPUs
(`os.sched_setaffinity`): XLA sizes its CPU thread pool from the schedulable CPUs and
torch is given `set_num_threads(N)`, so both use N cores. XLA has no flag for an
intra-op thread count (only `--xla_cpu_multi_thread_eigen=false`, i.e. one thread), hence
the pinning. The default (0) keeps every schedulable CPU, and gives torch as many threads
(its own default would be the physical cores only). On a GPU, `--peer-device cuda` runs the
peer there too. A `--compare` file cannot say its batch and threads: save it with the same.
"""
import argparse
import ctypes
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from brainjax.anomaly import recon_error
from brainjax.anomaly import reference_loop
from brainjax.anomaly import synthetic_maps
from brainjax.tasks import cnn_cls
from brainjax.tasks import cvae_cls
from brainjax.tasks import gan_gen
from brainjax.tasks import vae_gen
from brainjax.train import loop
from configs import cnn_cls as cnn_config
from configs import cvae_cls as cvae_config
from configs import gan_gen as gan_config
from configs import vae_gen as vae_config

MODELS = ('cnn', 'cvae', 'vae', 'gan')
PEER_SCRIPT = (pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'bench'
               / 'torch_reference.py')

# Runs in the torch interpreter: the peer's own step, timed like ours (argv: script dir,
# module, model, batch, steps, threads, device). Its tensors and modules are created on
# `device` (torch's default device), and each step is waited for. Prints one JSON line.
_PEER_WRAPPER = r'''
import importlib, json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
peer = importlib.import_module(sys.argv[2])
name, batch, steps, threads = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
device = torch.device(sys.argv[7])
if threads:
  torch.set_num_threads(threads)
torch.set_default_device(device)
torch.manual_seed(0)
wait = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
step = peer.make_step(name, batch)
start = time.perf_counter()
step()
wait()
first = time.perf_counter() - start
times, cpu = [], []
for _ in range(steps):
  start, cpu_start = time.perf_counter(), time.process_time()
  step()
  wait()
  times.append(time.perf_counter() - start)
  cpu.append(time.process_time() - cpu_start)
with open('/proc/self/status') as f:  # VmHWM: this process's own peak (ru_maxrss may
  peak_kb = [int(l.split()[1]) for l in f if l.startswith('VmHWM:')][0]  # keep the parent's)
out = {'times': times, 'cpu_times': cpu, 'first_step_s': first, 'threads': torch.get_num_threads(),
       'version': torch.__version__, 'device': str(device), 'peak_memory_mb': peak_kb / 1024}
if device.type == 'cuda':
  out['peak_device_memory_mb'] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
'''


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
  """--help with the module docstring's first paragraph as written, and every default."""


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m brainjax.bench', description=__doc__.split('\n\n')[0],
      formatter_class=_HelpFormatter)
  parser.add_argument('--models', default=','.join(MODELS),
                      help='comma-separated subset of ' + ','.join(MODELS) + " ('' for none)")
  parser.add_argument('--batch', type=int, default=64, help='images per train step')
  parser.add_argument('--steps', type=int, default=5, help='timed steps after the warm-up')
  parser.add_argument('--rounds', type=int, default=1,
                      help='repeat the (peer, JAX) pair of each model this often; medians pool '
                      'every round (more robust on a shared machine)')
  parser.add_argument('--preset', choices=('paper', 'smoke'), default='paper',
                      help="network widths: the study's ('paper') or tiny ('smoke', for tests)")
  parser.add_argument('--half-precision', action='store_true',
                      help='bfloat16 activations (config.half_precision), for GPUs and TPUs')
  parser.add_argument('--threads', type=int, default=0,
                      help='pin this process and the peer to N CPUs (0: defaults)')
  parser.add_argument('--malloc-tuning', action=argparse.BooleanOptionalAction, default=True,
                      help='keep freed memory in-process (glibc mallopt here, GLIBC_TUNABLES for '
                      'the peer): fewer page faults, for both alike')
  parser.add_argument('--peer', action='store_true',
                      help='time the PyTorch peer model by model, back to back with JAX')
  parser.add_argument('--torch-python', default='python3',
                      help='the interpreter that has torch, for --peer')
  parser.add_argument('--peer-device', default='cpu',
                      help="torch device the peer runs on, e.g. 'cuda' beside a GPU run")
  parser.add_argument('--peer-script', default=str(PEER_SCRIPT),
                      help='the PyTorch reference whose step functions --peer times')
  parser.add_argument('--compare', default='',
                      help="a saved JSON of the peer script's output, instead of --peer (it "
                      "holds the peer's mean step, where --peer times medians on both sides; "
                      "save it with this run's --batch and --threads)")
  parser.add_argument('--anomaly', action=argparse.BooleanOptionalAction, default=True,
                      help='also time reconstruction error and the anomaly grid searches')
  parser.add_argument('--anomaly-slices', type=int, default=3000,
                      help='error maps the anomaly stage and its loop baseline run on')
  parser.add_argument('--output', default='', help='also write the JSON here')
  args = parser.parse_args(argv)
  args.models = [m for m in args.models.split(',') if m]
  unknown = sorted(set(args.models) - set(MODELS))
  if unknown:
    parser.error(f'unknown model(s) {", ".join(unknown)}; choose from {", ".join(MODELS)}')
  for flag in ('batch', 'steps', 'rounds', 'anomaly_slices'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")} must be >= 1')
  if args.threads < 0:
    parser.error('--threads must be >= 0')
  if args.peer and args.compare:
    parser.error('use either --peer or --compare')
  if (args.peer or args.compare) and args.half_precision:
    parser.error('the peer runs in float32: compare it with float32 steps (no --half-precision)')
  if (args.peer or args.compare) and args.preset != 'paper':
    parser.error('the peer times the full-size networks: use --peer and --compare with '
                 '--preset paper')
  if not args.malloc_tuning and any(
      _is_malloc_tunable(t) for t in os.environ.get('GLIBC_TUNABLES', '').split(':')):
    # (glibc read it as this process started: the JSON would call tuned steps untuned)
    parser.error('GLIBC_TUNABLES sets glibc.malloc tunables, which tune this process\'s '
                 'malloc: leave them out for --no-malloc-tuning')
  if args.output and (os.path.isdir(args.output) or not os.path.isdir(
      os.path.dirname(os.path.abspath(args.output)))):  # (checked before minutes of timing)
    parser.error(f'--output {args.output}: not a file in an existing folder')
  return args


def _is_malloc_tunable(tunable):
  """Whether an entry of GLIBC_TUNABLES sets a glibc.malloc tunable."""
  return tunable.startswith('glibc.malloc.')


# glibc mallopt parameters, and the same settings as GLIBC_TUNABLES (for the peer's process).
_MALLOPT = {'arena_max': (-8, 1), 'mmap_max': (-4, 0), 'trim_threshold': (-1, 2**31 - 1),
            'top_pad': (-2, 64 << 20)}
MALLOC_TUNABLES = ':'.join(f'glibc.malloc.{k}={v}' for k, (_, v) in _MALLOPT.items())


def tune_malloc():
  """Keeps freed memory in the process instead of giving it back to the OS.

  XLA:CPU allocates each execution's buffers with malloc; glibc serves blocks over
  32 MiB (BrainCNN's first activations are 128 MiB at batch 64) with a fresh mmap,
  whose every 4 KiB page then faults and is zeroed by the kernel on first touch, and
  unmaps them on free, so every step pays it again (torch alike). One arena, no mmap
  and no trimming let freed blocks be reused: here, at 2fc2c6d, BrainCNN steps ran at
  73-83 img/s with it and 65-66 without, torch's at 77-83 and 49-51. Since 591c99e
  JAX's BrainCNN no longer gains (81.9 against 85.1 img/s), torch's still does (83.3
  against 48.4; README, Performance, has later runs of both settings). Call before JAX's
  first computation (its worker threads must not have their own arenas yet).
  Returns whether glibc accepted the settings (False elsewhere, e.g. macOS).
  """
  try:
    libc = ctypes.CDLL('libc.so.6')
    return all(libc.mallopt(param, value) == 1 for param, value in _MALLOPT.values())
  except (OSError, AttributeError):
    return False


def pin_threads(num):
  """Restricts this process (and its future children) to `num` CPUs; returns the count used.

  Takes full effect when called before JAX's first computation (XLA then sizes its pool
  to these CPUs); called later, XLA's threads still share only these CPUs.
  """
  cpus = sorted(os.sched_getaffinity(0))
  if num:
    if num > len(cpus):
      raise ValueError(f'--threads {num}, but only {len(cpus)} CPUs are schedulable')
    cpus = cpus[:num]
    os.sched_setaffinity(0, cpus)
  return len(cpus)


# ----------------------------------------------------------------------------- train steps


def task_config(name, preset, half_precision=False):
  module, variant = {'cnn': (cnn_config, 'real'), 'cvae': (cvae_config, 'real'),
                     'vae': (vae_config, 'positive'), 'gan': (gan_config, 'positive')}[name]
  config = module.get_config(f'{variant},{preset}')
  config.half_precision = half_precision
  return config


def train_setup(name, config, batch_size, rng):
  """(train_step, state, batch) of one task, as its train_and_evaluate builds them."""
  init_rng, image_rng, label_rng = jax.random.split(rng, 3)
  task = {'cnn': cnn_cls, 'cvae': cvae_cls, 'vae': vae_gen, 'gan': gan_gen}.get(name)
  if task is None:
    raise ValueError(f'unknown model {name!r}; choose from {list(MODELS)}')
  models = task.create_models(config) if name == 'gan' else (task.create_model(config),)
  state = task.create_train_state(config, *models, init_rng)
  step = task.make_train_step(config, *models)
  size = config.data.image_size
  batch = {'image': jax.random.uniform(image_rng, (batch_size, size, size, 1), jnp.float32),
           'label': jax.random.randint(label_rng, (batch_size,), 0, 2, jnp.int32)}
  return step, state, batch


class StepTimer:
  """One task's compiled train step, its (donated) state and a fixed batch on one device.

  `flops_per_step`: XLA's count of the floating-point operations in the step
  (`cpu_flops`).
  """

  def __init__(self, name, preset, batch_size, half_precision=False):
    device = jax.local_devices()[0]
    step, state, batch = train_setup(name, task_config(name, preset, half_precision), batch_size,
                                     jax.random.PRNGKey(0))
    self._state, self._batch = jax.device_put((state, batch), device)
    self._rng = jax.random.PRNGKey(1)
    self._count = 0
    start = time.perf_counter()
    jitted = loop.compile_step(step, [device])
    self._step = jitted.lower(self._state, self._batch, self._rng).compile()
    self.first_step_s = time.perf_counter() - start + self.run(1)[0][0]  # compile + warm-up
    self.flops_per_step = cpu_flops(jitted, self._state, self._batch, self._rng)

  def run(self, steps):
    """(wall seconds, process CPU seconds) of each of `steps` further steps, each waited for."""
    times, cpu = [], []
    for _ in range(steps):
      rng = jax.random.fold_in(self._rng, self._count)
      jax.block_until_ready(rng)
      start, cpu_start = time.perf_counter(), time.process_time()
      self._state, metrics = self._step(self._state, self._batch, rng)
      jax.block_until_ready((self._state, metrics))
      times.append(time.perf_counter() - start)
      cpu.append(time.process_time() - cpu_start)
      self._count += 1
    if not all(np.isfinite(float(v)) for v in jax.device_get(metrics).values()):
      raise FloatingPointError(f'non-finite metrics in the benchmarked step: {metrics}')
    return times, cpu


def cpu_flops(jitted, *args):
  """XLA's count of the floating-point operations of `jitted(*args)` (0 if unavailable).

  Counted on the program lowered for CPU, whatever device `args` are on: a GPU
  backend (a PJRT plugin) gives no cost analysis of a lowered program (none on an
  H200, jax 0.11.2). The arithmetic is about the same: on CPU some convolution gradients
  are GEMMs or convolutions on pixel blocks (models/conv_gradients.py), the same
  multiply-adds as the convolutions but for the blocks' one more row and column.
  """
  try:
    cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  except RuntimeError:  # JAX_PLATFORMS leaves the CPU out
    return 0.0
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), args)
  cost = jitted.trace(*abstract).lower().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # one per device in old versions
  return float((cost or {}).get('flops', 0.0))


# Dense tensor-core peaks in TFLOP/s from the vendors' datasheets (SXM parts), keyed by
# jax's device_kind. JAX's default precision runs float32 convolutions and matmuls as
# TF32 on these chips; bfloat16 runs at twice that rate.
PEAK_TFLOPS = {'NVIDIA H100 80GB HBM3': {'float32': 494.7, 'bfloat16': 989.4},
               'NVIDIA H200': {'float32': 494.7, 'bfloat16': 989.4},
               'NVIDIA A100-SXM4-80GB': {'float32': 156.0, 'bfloat16': 312.0},
               'NVIDIA A100-SXM4-40GB': {'float32': 156.0, 'bfloat16': 312.0}}


def arithmetic_rate(flops_per_step, ms_per_step, device_kind, half_precision):
  """{'flops_per_step', 'tflop_per_s'}, plus {'peak_tflop_per_s', 'peak_fraction'} on a chip
  in PEAK_TFLOPS; nothing when no count could be had (`cpu_flops` gave 0)."""
  if not flops_per_step:
    return {}
  rate = {'flops_per_step': flops_per_step,
          'tflop_per_s': flops_per_step / (ms_per_step * 1e-3) / 1e12}
  peak = PEAK_TFLOPS.get(device_kind, {}).get('bfloat16' if half_precision else 'float32')
  if peak:
    rate.update(peak_tflop_per_s=peak, peak_fraction=rate['tflop_per_s'] / peak)
  return rate


def summarise(times, cpu_times, batch_size):
  """Median step time as {'img_per_s', 'ms_per_step'}, plus the mean (the peer script's
  statistic) and the median process CPU time per step (all threads; less sensitive to
  other load on a shared machine than wall time)."""
  median = statistics.median(times)
  return {'img_per_s': batch_size / median, 'ms_per_step': median * 1e3,
          'ms_per_step_mean': statistics.fmean(times) * 1e3,
          'cpu_ms_per_step': statistics.median(cpu_times) * 1e3, 'steps_timed': len(times)}


def run_peer(args, name, steps):
  """The peer's step of `name`, timed by _PEER_WRAPPER in the torch interpreter."""
  script = pathlib.Path(args.peer_script).resolve()
  command = [args.torch_python, '-c', _PEER_WRAPPER, str(script.parent), script.stem, name,
             str(args.batch), str(steps), str(args.threads), args.peer_device]
  try:
    env = dict(os.environ)
    # (the other tunables as they are; malloc's glibc's defaults, or the tuning)
    others = [t for t in env.pop('GLIBC_TUNABLES', '').split(':')
              if t and not _is_malloc_tunable(t)]
    tunables = ':'.join(others + ([MALLOC_TUNABLES] if args.malloc_tuning else []))
    if tunables:
      env['GLIBC_TUNABLES'] = tunables
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
  except OSError as error:
    raise ValueError(f'cannot run the peer with --torch-python {args.torch_python}: {error}')
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ['(no output)'])[-1]
    raise ValueError(f'the peer failed on {name} (exit {done.returncode}): {last}')
  try:
    return json.loads(done.stdout.strip().splitlines()[-1])
  except (IndexError, json.JSONDecodeError):
    last = (done.stdout.strip().splitlines() or done.stderr.strip().splitlines()
            or ['(no output)'])[-1]
    raise ValueError(f'the peer printed no JSON for {name} (--torch-python '
                     f'{args.torch_python}): {last}') from None


def load_peer_json(path):
  """A saved output of the peer script, {model: {'img_per_s': ...}, ...}."""
  try:
    with open(path) as f:
      peer = json.load(f)
  except (OSError, json.JSONDecodeError) as error:
    raise ValueError(f'cannot read the peer JSON {path}: {error}')
  if not isinstance(peer, dict) or not all(
      isinstance(v, dict) and 'img_per_s' in v for v in peer.values()):
    raise ValueError(f'{path}: expected {{model: {{"img_per_s": ...}}}} as the peer script prints')
  return peer


def check_peer(args):
  """Fails before any timing if --peer cannot run."""
  if not pathlib.Path(args.peer_script).is_file():
    raise ValueError(f'peer script not found: {args.peer_script} (set --peer-script)')
  if shutil.which(args.torch_python) is None:
    raise ValueError(f'cannot run the peer with --torch-python {args.torch_python}: '
                     'no such executable')


def benchmark_train_steps(args, log):
  """{name: summary} for JAX, and {name: summary} for the peer when it runs here."""
  ours, peer = {}, {}
  for name in args.models:
    # Wall seconds each side spends on this model (setup, compilation and the peer's process
    # start included): the log says where a long run's time went, even if it is cut short.
    start = time.perf_counter()
    timer = StepTimer(name, args.preset, args.batch, args.half_precision)
    jax_s, torch_s = time.perf_counter() - start, 0.0
    jax_times, jax_cpu, torch_times, torch_cpu = [], [], [], []
    for _ in range(args.rounds):
      if args.peer:
        start = time.perf_counter()
        result = run_peer(args, name, args.steps)
        torch_s += time.perf_counter() - start
        torch_times += result['times']
        torch_cpu += result['cpu_times']
        peer[name] = {k: v for k, v in result.items() if k not in ('times', 'cpu_times')}
      start = time.perf_counter()
      times, cpu = timer.run(args.steps)
      jax_s += time.perf_counter() - start
      jax_times += times
      jax_cpu += cpu
    ours[name] = {**summarise(jax_times, jax_cpu, args.batch), 'first_step_s': timer.first_step_s}
    ours[name].update(arithmetic_rate(timer.flops_per_step, ours[name]['ms_per_step'],
                                      jax.devices()[0].device_kind, args.half_precision))
    if args.peer:
      peer[name].update(summarise(torch_times, torch_cpu, args.batch))
    log(f'{name}: jax {ours[name]["img_per_s"]:.1f} img/s (compile and first step '
        f'{timer.first_step_s:.1f} s, {jax_s:.0f} s in all)'
        + (f', torch {peer[name]["img_per_s"]:.1f} img/s ({torch_s:.0f} s in all)'
           if name in peer else ''))
    # Drop the step's compiled programs and traces with it: left in JAX's caches (400,000
    # objects after the four networks), they cost every later trace full garbage
    # collections (the anomaly stage's first calls: 0.4 s for single-image KMeans).
    del timer
    jax.clear_caches()
  return ours, peer


# ----------------------------------------------------------------------------- anomaly stage


def time_reconstruction_error(preset, num_slices, half_precision=False):
  """(first call, second call) seconds of `recon_error.reconstruction_error` of `num_slices`
  slices with a BrainCVAE, called as cvae_cls does; the first call includes compilation.

  Freshly initialised parameters: the cost does not depend on their values or on the
  slices' content, so the slices are uniform noise.
  """
  config = task_config('cvae', preset, half_precision)
  model = cvae_cls.create_model(config)
  init_rng, image_rng = jax.random.split(jax.random.PRNGKey(0))
  variables = cvae_cls.create_train_state(config, model, init_rng).variables
  size = config.data.image_size
  images = np.asarray(jax.random.uniform(image_rng, (num_slices, size, size, 1), jnp.float32))
  reconstruct_fn = cvae_cls.Reconstruction(model)
  seconds = []
  for _ in range(2):
    start = time.perf_counter()
    errors = recon_error.reconstruction_error(reconstruct_fn, images, variables=variables)
    seconds.append(time.perf_counter() - start)
  if errors.shape != (num_slices, size * size) or not np.isfinite(errors).all():
    raise FloatingPointError(f'bad reconstruction errors: shape {errors.shape}')
  return tuple(seconds)


def anomaly_grid_config(preset):
  """The grids `cvae_cls` searches (config.anomaly); 'smoke' shrinks them for tests."""
  config = task_config('cvae', 'paper').anomaly
  if preset == 'smoke':
    config.num_anomaly_thresholds = config.num_tumor_index = config.num_alpha = 5
    config.num_global_thresholds = 3
    config.dbscan_anomaly_thresholds, config.dbscan_eps = (0.7,), (0.012,)
    config.dbscan_min_samples = (4,)
  return config


def benchmark_anomaly(args, log):
  """Seconds of the reconstruction error and of each rule's validation grid search.

  `anomaly_total_s` is what a cvae_cls evaluation pays: the reconstruction error's
  first call (compilation included) plus the four grid searches.

  The grid searches run on CVAE-like synthetic error maps (synthetic_maps,
  half tumour): their cost depends on how many pixels are anomalous,
  which an untrained CVAE would not show realistically. The scikit-learn/NumPy loop
  runs in full on the same maps; `speedup` is its time over the fast one's, and
  `same_selection` says whether both chose the same hyperparameters.
  """
  n = args.anomaly_slices
  first_s, recon_s = time_reconstruction_error(args.preset, n, args.half_precision)
  log(f'reconstruction error of {n} slices: {recon_s:.2f} s ({first_s:.2f} s with compilation)')
  errors, labels, _ = synthetic_maps.synthetic_error_maps(n, seed=0)
  timings = reference_loop.benchmark(errors, labels, anomaly_grid_config(args.preset))
  for rule, t in timings.items():
    scores = (f', largest score difference {t["max_score_difference"]:.2g}'
              if 'max_score_difference' in t else '')
    log(f'{rule}: grid search {t["fast_s"]:.2f} s, loop {t["loop_s"]:.1f} s '
        f'({t["speedup"]:.0f}x; same selection: {t["same_selection"]}{scores})')
  grid_s = {rule: t['fast_s'] for rule, t in timings.items()}
  # The four searches together against the loop's four (the 100x target).
  speedup = sum(t['loop_s'] for t in timings.values()) / sum(grid_s.values())
  log(f'grid searches: {sum(grid_s.values()):.2f} s in all, {speedup:.0f}x the loop')
  return {f'recon_error_{n}_s': recon_s, f'recon_error_{n}_first_call_s': first_s,
          'anomaly_grid_search_s': grid_s,
          'anomaly_grid_search_speedup': speedup,
          'anomaly_total_s': first_s + sum(grid_s.values()),
          'anomaly_loop_baseline': {rule: {k: t[k] for k in ('loop_s', 'speedup', 'loop_cpu_s',
                                                              'cpu_speedup', 'same_selection',
                                                              'max_score_difference') if k in t}
                                    for rule, t in timings.items()}}


# ----------------------------------------------------------------------------- entry point


def device_name():
  device = jax.devices()[0]
  return f'{device.platform}: {device.device_kind}'


def peak_memory_mb():
  """{'peak_memory_mb': host peak}, plus the accelerator's own peak where it reports one."""
  peak = {'peak_memory_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB
  stats = jax.devices()[0].memory_stats() or {}  # None on CPU
  if 'peak_bytes_in_use' in stats:
    peak['peak_device_memory_mb'] = stats['peak_bytes_in_use'] / 2**20
  return peak


def run(args, log=lambda message: print(message, file=sys.stderr)):
  """The benchmark of parsed `args` as one JSON-ready dict."""
  compared = load_peer_json(args.compare) if args.compare else {}
  if args.peer:
    check_peer(args)
  threads = pin_threads(args.threads)
  args = argparse.Namespace(**{**vars(args), 'threads': threads})  # the peer's too
  malloc_tuned = tune_malloc() if args.malloc_tuning else False
  out, peer = benchmark_train_steps(args, log)
  peer = peer or compared
  for name in args.models:
    if name in peer:
      out[name]['ratio_vs_torch'] = out[name]['img_per_s'] / peer[name]['img_per_s']
  if args.anomaly:
    out.update(benchmark_anomaly(args, log))
  out.update(peak_memory_mb(), device=device_name(), threads=threads,
             malloc_tuning=malloc_tuned, batch=args.batch, preset=args.preset,
             half_precision=args.half_precision, jax_version=jax.__version__)
  if peer:
    out['torch'] = peer
  return out


def main(argv=None):
  args = parse_args(argv)
  try:
    out = run(args)
  except ValueError as error:
    sys.exit(f'error: {error}')
  text = json.dumps(out)
  print(text)  # (first: the figures are not lost if the file cannot be written)
  if args.output:
    try:
      with open(args.output, 'w') as f:
        f.write(text + '\n')
    except OSError as error:
      sys.exit(f'error: cannot write --output {args.output}: {error.strerror or error}')


if __name__ == '__main__':
  main()
