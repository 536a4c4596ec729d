"""Smoke tests of the benchmark harness: it runs in-process and its JSON has the peer's shape."""
import json

import pytest

from brainjax import bench

TINY = ['--batch', '4', '--steps', '2', '--preset', 'smoke']


def test_train_step_json_shape_and_peer_ratio(tmp_path, capsys):
  peer = tmp_path / 'peer.json'
  peer.write_text(json.dumps({'cnn': {'img_per_s': 2.0, 'ms_per_step': 2000.0}}))
  output = tmp_path / 'out.json'
  bench.main(['--models', 'cnn', '--no-anomaly', '--compare', str(peer), '--output', str(output)]
             + TINY)
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed == json.loads(output.read_text())
  cnn = printed['cnn']
  assert cnn['img_per_s'] > 0 and cnn['steps_timed'] == 2
  assert cnn['img_per_s'] == pytest.approx(4 / (cnn['ms_per_step'] / 1e3))
  assert cnn['ratio_vs_torch'] == pytest.approx(cnn['img_per_s'] / 2.0)
  assert printed['peak_memory_mb'] > 0 and printed['threads'] >= 1
  assert isinstance(printed['device'], str) and printed['device']
  assert printed['torch'] == {'cnn': {'img_per_s': 2.0, 'ms_per_step': 2000.0}}  # kept beside
  assert 'recon_error_3000_s' not in printed  # --no-anomaly


@pytest.mark.slow  # compiles three more networks; tests/test_generators.py covers their steps
@pytest.mark.parametrize('name', ['cvae', 'vae', 'gan'])
def test_every_task_step_runs(name):
  args = bench.parse_args(['--models', name, '--no-anomaly'] + TINY)
  ours, peer = bench.benchmark_train_steps(args, log=lambda message: None)
  assert set(ours) == {name} and peer == {}
  assert ours[name]['img_per_s'] > 0 and ours[name]['first_step_s'] > 0


def test_bad_arguments_are_one_line_errors(tmp_path):
  with pytest.raises(SystemExit):
    bench.parse_args(['--models', 'cnn,resnet'])
  with pytest.raises(SystemExit):
    bench.parse_args(['--steps', '0'])
  script = tmp_path / 'torch_reference.py'
  script.write_text('')
  with pytest.raises(SystemExit, match='error: cannot run the peer'):
    bench.main(['--models', 'cnn', '--no-anomaly', '--peer', '--peer-script', str(script),
                '--torch-python', str(tmp_path / 'no-such-python')] + TINY)
