"""Smoke tests of the benchmark harness: it runs in-process and its JSON has the peer's shape.

No timing assertions: only that every part runs and reports what it should.
"""
import json
import re
import types

import jax
import pytest

from brainjax import bench
from brainjax.tasks import cvae_cls
from brainjax.tasks import variational

TINY = ['--batch', '4', '--steps', '2', '--preset', 'smoke']


def test_train_step_json_shape_and_peer_ratio(tmp_path, capsys):
  peer = tmp_path / 'peer.json'
  peer.write_text(json.dumps({'cnn': {'img_per_s': 2.0, 'ms_per_step': 2000.0}}))
  output = tmp_path / 'out.json'
  # --compare takes the full-size networks (the peer's): the paper BrainCNN at batch 4.
  bench.main(['--models', 'cnn', '--no-anomaly', '--compare', str(peer), '--output', str(output),
              '--batch', '4', '--steps', '2'])
  captured = capsys.readouterr()
  printed = json.loads(captured.out.strip().splitlines()[-1])
  assert printed == json.loads(output.read_text())
  # The log line says where the model's time went (a run cut short keeps its log).
  assert re.search(r'^cnn: jax [\d.]+ img/s \(compile and first step [\d.]+ s, \d+ s in all\)$',
                   captured.err, re.MULTILINE)
  cnn = printed['cnn']
  assert cnn['steps_timed'] == 2 and cnn['img_per_s'] > 0 and cnn['cpu_ms_per_step'] >= 0
  assert cnn['img_per_s'] == pytest.approx(4 / (cnn['ms_per_step'] / 1e3))
  assert cnn['ratio_vs_torch'] == pytest.approx(cnn['img_per_s'] / 2.0)
  assert printed['peak_memory_mb'] > 0 and printed['threads'] >= 1
  assert isinstance(printed['device'], str) and printed['device']
  assert not any(k.startswith(('recon_error', 'anomaly')) for k in printed)
  assert cnn['flops_per_step'] > 0 and cnn['tflop_per_s'] == pytest.approx(
      cnn['flops_per_step'] / (cnn['ms_per_step'] / 1e3) / 1e12)


def test_flops_per_step_counts_the_convolutions_in_either_precision():
  # Smoke BrainCNN at batch 4: 3x3 convs at 128, 64 and 32 px, then small dense layers.
  # Forward + both gradients is about three forward passes of convolutions; BatchNorm,
  # pooling and Adam add elementwise work (the smoke step counts about four in all).
  args = bench.parse_args(['--models', 'cnn', '--no-anomaly', '--half-precision'] + TINY)
  ours, _ = bench.benchmark_train_steps(args, log=lambda message: None)
  full = bench.StepTimer('cnn', 'smoke', 4)
  assert ours['cnn']['flops_per_step'] == pytest.approx(full.flops_per_step, rel=0.05)
  config = bench.task_config('cnn', 'smoke')
  widths = (1,) + tuple(config.model.conv_widths)
  forward = sum(2 * 9 * i * o * (128 // 2**k) ** 2 * 4
                for k, (i, o) in enumerate(zip(widths[:-1], widths[1:])))
  assert 2.5 * forward < full.flops_per_step < 4 * forward + 3e7  # + the dense layers


def test_peak_fraction_only_on_known_chips():
  rate = bench.arithmetic_rate(2e12, 10.0, 'NVIDIA H200', half_precision=True)
  assert rate['tflop_per_s'] == pytest.approx(200.0)
  assert rate['peak_fraction'] == pytest.approx(200.0 / 989.4)
  assert 'peak_fraction' not in bench.arithmetic_rate(2e12, 10.0, 'cpu', half_precision=False)
  assert bench.arithmetic_rate(0.0, 10.0, 'NVIDIA H200', half_precision=False) == {}  # no count


def test_cvae_times_the_task_train_step():
  config = bench.task_config('cvae', 'smoke')
  step, state, batch = bench.train_setup('cvae', config, 4, jax.random.PRNGKey(0))
  assert step.func is variational.train_step
  assert step.keywords['reconstruction_loss'] is cvae_cls.cvae_reconstruction_loss
  assert batch['image'].shape == (4, 128, 128, 1) and batch['label'].shape == (4,)
  assert float(batch['image'].min()) >= 0 and float(batch['image'].max()) <= 1
  assert int(state.step) == 0


@pytest.mark.slow  # compiles three train steps: minutes on a busy 2-core CPU
def test_every_task_step_runs():
  args = bench.parse_args(['--models', 'cvae,vae,gan', '--no-anomaly', '--rounds', '2'] + TINY)
  ours, peer = bench.benchmark_train_steps(args, log=lambda message: None)
  assert set(ours) == {'cvae', 'vae', 'gan'} and peer == {}
  for result in ours.values():
    assert result['steps_timed'] == 4  # two rounds of two steps
    assert result['img_per_s'] > 0 and result['first_step_s'] > 0


def test_anomaly_stage_reports_every_rule(capsys):
  bench.main(['--models', '', '--anomaly-slices', '12'] + TINY)
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  rules = {'giaem', 'dbscan', 'kmeans', 'global_kmeans'}
  # (no order of the two: another test of this process may have compiled the same program)
  assert printed['recon_error_12_first_call_s'] > 0 and printed['recon_error_12_s'] > 0
  assert set(printed['anomaly_grid_search_s']) == rules
  assert set(printed['anomaly_loop_baseline']) == rules
  assert printed['anomaly_total_s'] == pytest.approx(
      printed['recon_error_12_first_call_s'] + sum(printed['anomaly_grid_search_s'].values()))
  for baseline in printed['anomaly_loop_baseline'].values():
    assert baseline['loop_s'] > 0 and baseline['speedup'] > 0
    assert baseline['loop_cpu_s'] > 0 and baseline['cpu_speedup'] > 0
    assert baseline['same_selection'] is True
  assert printed['anomaly_loop_baseline']['kmeans']['max_score_difference'] == 0
  assert printed['anomaly_grid_search_speedup'] == pytest.approx(
      sum(b['loop_s'] for b in printed['anomaly_loop_baseline'].values())
      / sum(printed['anomaly_grid_search_s'].values()))


def _refusal(args, capsys):
  """The last line argparse prints when it refuses args (it exits with status 2)."""
  with pytest.raises(SystemExit) as info:
    bench.parse_args(args)
  assert info.value.code == 2
  return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
  assert 'unknown model(s) resnet' in _refusal(['--models', 'cnn,resnet'], capsys)
  assert '--steps must be >= 1' in _refusal(['--steps', '0'], capsys)
  assert 'either --peer or --compare' in _refusal(['--peer', '--compare', 'peer.json'], capsys)
  script = tmp_path / 'torch_reference.py'
  script.write_text('')
  with pytest.raises(SystemExit, match='error: cannot run the peer'):
    bench.main(['--models', 'cnn', '--no-anomaly', '--peer', '--peer-script', str(script),
                '--torch-python', str(tmp_path / 'no-such-python'), '--steps', '1'])
  for peer in (['--peer'], ['--compare', 'peer.json']):  # a tiny network against the peer's
    assert 'the peer times the full-size networks' in _refusal(peer + ['--preset', 'smoke'],
                                                                capsys)
  with pytest.raises(SystemExit, match='error: .*no-such.json'):
    bench.main(['--models', '', '--no-anomaly', '--compare', str(tmp_path / 'no-such.json')])
  for peer in (['--peer'], ['--compare', 'peer.json']):  # bfloat16 steps against float32 ones
    assert 'the peer runs in float32' in _refusal(peer + ['--half-precision'], capsys)
  # An --output that cannot be written: refused before the timing (it was a traceback after it,
  # every figure lost).
  for output in (tmp_path, tmp_path / 'no-such-folder' / 'bench.json'):
    assert 'not a file in an existing folder' in _refusal(['--output', str(output)], capsys)


def test_no_malloc_tuning_leaves_both_processes_glibc_s_defaults(monkeypatch, tmp_path, capsys):
  # GLIBC_TUNABLES set (as the README shows for launch.py) tuned the peer and this process while
  # the JSON said malloc_tuning: false.
  monkeypatch.setenv('GLIBC_TUNABLES', bench.MALLOC_TUNABLES)
  assert 'leave them out for --no-malloc-tuning' in _refusal(['--no-malloc-tuning'], capsys)
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.pthread.rseq=0')  # (no malloc tunable: kept)
  seen = []
  def fake_run(command, env, **kwargs):
    seen.append(env.get('GLIBC_TUNABLES'))
    return types.SimpleNamespace(returncode=0, stdout='', stderr='')
  monkeypatch.setattr(bench.subprocess, 'run', fake_run)
  for flag, expected in (('--malloc-tuning', 'glibc.pthread.rseq=0:' + bench.MALLOC_TUNABLES),
                         ('--no-malloc-tuning', 'glibc.pthread.rseq=0')):
    args = bench.parse_args(['--peer', flag])
    # A peer that prints nothing: one line (an IndexError traceback).
    with pytest.raises(ValueError, match='the peer printed no JSON for cnn'):
      bench.run_peer(args, 'cnn', 1)
    assert seen.pop() == expected


def test_the_peer_runs_on_as_many_threads_as_this_process(monkeypatch):
  # (With --threads 0 it had been given 0, i.e. torch's default: the physical cores only.)
  seen = []

  def fake_peer(args, name, steps):
    seen.append(args.threads)
    return {'times': [1.0] * steps, 'cpu_times': [1.0] * steps, 'first_step_s': 1.0}

  monkeypatch.setattr(bench, 'check_peer', lambda args: None)
  monkeypatch.setattr(bench, 'run_peer', fake_peer)
  monkeypatch.setattr(bench, 'pin_threads', lambda num: num or 7)
  out = bench.run(bench.parse_args(['--models', 'cnn', '--no-anomaly', '--peer', '--batch', '2',
                                    '--steps', '1']), log=lambda message: None)
  assert seen == [7] and out['threads'] == 7 and out['torch']['cnn']['img_per_s'] == 2.0


def test_flops_are_counted_on_the_cpu_lowering_whatever_the_arguments():
  # A 64x64 matmul is 2 * 64**3 flops; abstract arguments (no device) count the same.
  matmul = jax.jit(lambda a, b: a @ b)
  a = jax.numpy.ones((64, 64))
  assert bench.cpu_flops(matmul, a, a) == 2 * 64**3
  assert bench.cpu_flops(matmul, jax.ShapeDtypeStruct((64, 64), a.dtype), a) == 2 * 64**3
