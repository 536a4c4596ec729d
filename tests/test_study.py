"""The whole study end to end at smoke size: every stage, Table 1, quality and privacy."""
import csv
import json
import os

import numpy as np
import pytest

from brainjax.data import synthetic
from brainjax.evaluation import baseline
from brainjax.evaluation import privacy
from brainjax.evaluation import roc
from brainjax.evaluation import study_table
from brainjax.tasks import datasets
from brainjax.tasks import study
from brainjax.train import reporting
from brainjax.train import reruns
from configs import study as study_config


def test_study_smoke_writes_table1_and_resumes(tmp_path, monkeypatch):
  config = study_config.get_config('quick,smoke')
  config.cache_dir = str(tmp_path / 'cache')
  workdir = str(tmp_path / 'study')
  drawn = {}  # figure file: the curves the study drew in it
  save_roc_figure = roc.save_roc_figure
  def spy(path, curves, title=''):
    drawn[os.path.basename(path)] = curves
    return save_roc_figure(path, curves, title)
  monkeypatch.setattr(study.roc, 'save_roc_figure', spy)
  summary = study.train_and_evaluate(config, workdir)
  results = os.path.join(workdir, 'results')
  _check_figures(workdir, drawn)
  table = open(os.path.join(results, 'table1.md')).read()
  for row in ('| CNN | real', '| CNN | synthetic (VAE)', '| CNN | mixed (VAE)',
              '| VAE (GIAEM) | real', '| VAE (DBSCAN) | mixed (VAE)',
              '| VAE (Global KMeans) | synthetic (VAE)'):
    assert row in table, row
  assert '96.67 / 95.42 / 97.99 / 96.69' in table  # the study's CNN/real row beside ours
  rows = json.load(open(os.path.join(results, 'table1.json')))
  assert {r['train_data'] for r in rows['table1']} == {'real', 'synthetic', 'mixed'}
  assert set(rows['generators']) == {'random/seed0/vae_positive', 'random/seed0/vae_negative'}
  assert 0 <= rows['generators']['random/seed0/vae_positive']['tumour_visibility'] <= 1
  # The privacy audit compares the export with the generator's own training slices and with
  # held-out ones (the split's test slices), recomputed here from the files.
  sub = study.sub_config(config, 'cnn_cls', 'real', 'random', 0)
  source = datasets.real_source(sub)
  split = datasets.split(sub, source, 'cnn')
  fake = synthetic.read_synthetic(
      os.path.join(workdir, 'random', 'seed0', 'generators', 'vae_positive', 'synthetic'))
  audit = privacy.privacy_audit(fake.images, source.examples.take(split.train).with_label(1).images,
                                source.examples.take(split.test).with_label(1).images)
  row = rows['generators']['random/seed0/vae_positive']
  for key in ('median_synthetic_dcr', 'median_holdout_dcr', 'memorisation_rate'):
    assert row[f'pixel_{key}'] == pytest.approx(audit[key]), key
  assert row['pixel_median_holdout_dcr'] > 0 and row['frechet_distance'] > 0
  # results/privacy/ names each synthetic slice's nearest training slice, flagged as the
  # memorisation rate counts it.
  with open(os.path.join(results, 'privacy', 'random_seed0_vae_positive.csv')) as f:
    nearest = list(csv.DictReader(f))
  train_ids = source.examples.take(split.train).with_label(1).ids
  assert [r['synthetic'] for r in nearest] == [
      os.path.join('random', 'seed0', 'generators', 'vae_positive', 'synthetic', i)
      for i in fake.ids]
  assert [r['pixel_nearest_training'] for r in nearest] == list(
      train_ids[audit['synthetic_nearest']])
  np.testing.assert_allclose([float(r['pixel_distance']) for r in nearest],
                             audit['synthetic_dcr'], rtol=1e-12)
  assert np.mean([int(r['pixel_flagged']) for r in nearest]) == pytest.approx(
      audit['memorisation_rate'])
  assert np.mean([int(r['feature_flagged']) for r in nearest]) == pytest.approx(
      row['feature_memorisation_rate'])
  # The learning-free row: BrainCNN's training slices as the reference, its test slices scored.
  assert '| random | Thumbnail 1-NN (no learning) | real |' in table
  nearest = baseline.nearest_neighbour_metrics(source.examples.take(split.train),
                                               source.examples.take(split.test))
  # (the BrainCNN stage records it)
  cnn_real = reporting.read_metrics_json(os.path.join(workdir, 'random', 'seed0', 'cnn_cls_real'))
  for c in ('accuracy', 'auroc'):
    assert summary[f'random/Thumbnail 1-NN (no learning)/real/{c}'] == pytest.approx(nearest[c])
    assert cnn_real[f'nearest_neighbour_{c}'] == pytest.approx(nearest[c])
  assert os.path.exists(os.path.join(results, 'figures', 'samples_random_seed0_vae_positive.png'))
  assert 'random/CNN/real/accuracy' in summary
  # Every stage left metrics.json: a second call reruns no stage and gives the same table.
  stage_files = sorted(os.path.join(d, 'metrics.json') for d, _, fs in os.walk(workdir)
                       if 'metrics.json' in fs and d != workdir)
  assert len(stage_files) == 8  # 2 generators, 3 CNNs, 3 CVAEs
  stamps = [os.path.getmtime(f) for f in stage_files]
  dropped = os.path.join(results, 'figures', 'samples_random_seed1_vae_positive.png')
  open(dropped, 'wb').close()  # of a seed an earlier run had and this one drops
  dropped_csv = os.path.join(results, 'privacy', 'random_seed1_vae_positive.csv')
  open(dropped_csv, 'w').close()
  # A stage finished before stages wrote their test scores: its curve is left out.
  os.remove(os.path.join(workdir, 'random', 'seed0', 'cnn_cls_mixed_vae', 'test_scores.npz'))
  drawn.clear()
  again = study.train_and_evaluate(config, workdir)
  assert not os.path.exists(dropped) and not os.path.exists(dropped_csv)
  assert os.path.exists(os.path.join(results, 'privacy', 'random_seed0_vae_negative.csv'))
  assert len(drawn['roc_random_seed0.png']) == 6
  assert 'CNN, mixed (VAE)' not in {c.name for c in drawn['roc_random_seed0.png']}
  assert os.path.exists(os.path.join(results, 'figures', 'roc_random_seed0.png'))
  assert os.path.exists(os.path.join(results, 'figures', 'samples_random_seed0_vae_positive.png'))
  assert json.dumps(again, sort_keys=True) == json.dumps(summary, sort_keys=True)  # NaN-safe
  assert [os.path.getmtime(f) for f in stage_files] == stamps
  # A BrainCNN stage finished before its runs recorded the nearest-neighbour row: the study
  # computes the row itself, the same.
  older = {k: v for k, v in cnn_real.items() if not k.startswith('nearest_neighbour_')}
  reporting.write_metrics_json(os.path.join(workdir, 'random', 'seed0', 'cnn_cls_real'), older)
  assert json.dumps(study.train_and_evaluate(config, workdir), sort_keys=True) == json.dumps(
      summary, sort_keys=True)
  # An interrupted stage resumes with the study's folder named another way (relative here):
  # its config holds paths inside the study.
  unfinished = os.path.join(workdir, 'random', 'seed0', 'cnn_cls_synthetic_vae', 'metrics.json')
  os.remove(unfinished)
  monkeypatch.chdir(tmp_path)
  resumed = study.train_and_evaluate(config, 'study')
  assert json.dumps(resumed, sort_keys=True) == json.dumps(summary, sort_keys=True)
  assert os.path.exists(unfinished)
  # A file removed from the data since: every stage of the seed would be tested, and its
  # generators audited, on another split. Refused, before the study's results are touched.
  real_source = datasets.real_source
  def one_file_removed(config):  # (the last: a tumour slice, whose split then changes)
    source = real_source(config)
    return source._replace(examples=source.examples.take(np.arange(len(source.examples) - 1)))
  monkeypatch.setattr(datasets, 'real_source', one_file_removed)
  tables = sorted(os.listdir(results))
  with pytest.raises(reruns.RerunRefused, match='study stage vae_gen in .*held other slices'):
    study.train_and_evaluate(config, 'study')
  assert os.path.exists(os.path.join(workdir, 'metrics.json'))
  assert sorted(os.listdir(results)) == tables
  # A study begun before exports recorded their data's slices: its classifier stages' record
  # of their validation and test slices says it.
  for label in ('positive', 'negative'):
    manifest = os.path.join(workdir, 'random', 'seed0', 'generators', f'vae_{label}',
                            'synthetic', 'manifest.json')
    written = json.load(open(manifest))
    for entry in written['classes'].values():
      del entry['split_key']['slices']
    json.dump(written, open(manifest, 'w'))
  with pytest.raises(reruns.RerunRefused, match=r'study stage cnn_cls in .*cnn_cls_\w+ was '
                     'validated and tested on other slices'):
    study.train_and_evaluate(config, 'study')
  assert sorted(os.listdir(results)) == tables


def _check_figures(workdir, drawn):
  """results/figures/ holds a ROC figure with a curve per Table 1 classifier row (BrainCVAE: its
  selected rule), each of the area its stage's metrics.json reports, from its test slices; and
  each BrainCVAE stage's reconstruction/error panels."""
  figures = os.path.join(workdir, 'results', 'figures')
  assert open(os.path.join(figures, 'roc_random_seed0.png'), 'rb').read(4) == b'\x89PNG'
  curves = {c.name: c for c in drawn['roc_random_seed0.png']}
  # BrainCNN and BrainCVAE on real, synthetic and mixed data, and the nearest-neighbour row
  assert len(curves) == 7
  cnn_real = reporting.read_metrics_json(os.path.join(workdir, 'random', 'seed0', 'cnn_cls_real'))
  nearest = curves['Thumbnail 1-NN (no learning), real']
  assert nearest.auc == pytest.approx(cnn_real['nearest_neighbour_auroc'], abs=1e-9)
  for stage, data in (('real', 'real'), ('synthetic_vae', 'synthetic (VAE)'),
                      ('mixed_vae', 'mixed (VAE)')):
    for task in ('cnn_cls', 'cvae_cls'):
      run_dir = os.path.join(workdir, 'random', 'seed0', f'{task}_{stage}')
      metrics = reporting.read_metrics_json(run_dir)
      rule = metrics.get('selected_rule')
      model = 'CNN' if task == 'cnn_cls' else study_table.RULE_ROW_NAMES[rule]
      curve = curves[f'{model}, {data}']
      auroc = metrics['auroc' if task == 'cnn_cls' else f'{rule}_auroc']
      assert curve.auc == pytest.approx(auroc, abs=1e-9), curve.name  # its legend's number
      assert roc.curve_area(curve.fpr, curve.tpr) == pytest.approx(auroc, abs=1e-9)
      with np.load(os.path.join(run_dir, 'test_scores.npz')) as scores:
        test_ids = json.load(open(os.path.join(run_dir, 'eval_ids.json')))['test']
        assert sorted(scores['id']) == test_ids  # the real test slices, every one
      if task == 'cvae_cls':
        panels = os.path.join(figures, f'anomaly_random_seed0_{task}_{stage}.png')
        assert open(panels, 'rb').read() == open(
            os.path.join(run_dir, 'figures', 'anomaly_examples.png'), 'rb').read()


def test_each_seed_trains_its_classifiers_on_its_own_generators(tmp_path, monkeypatch):
  # A generator trained on seed 0's split has seen most of seed 1's test slices, so the
  # synthetic and mixed rows of seed 1 must use generators trained on seed 1's split.
  config = study_config.get_config('quick,smoke')
  config.seeds, config.generators = 2, 'vae,gan'
  stages = {}
  def fake_stage(task, sub, run_dir):
    stages[run_dir] = sub
    return {}
  monkeypatch.setattr(study, 'run_stage', fake_stage)
  monkeypatch.setattr(study, 'audit_generators', lambda *args: {})
  monkeypatch.setattr(study.study_table, 'write_tables', lambda *args: [os.devnull])
  monkeypatch.setattr(study.reporting, 'write_metrics_json', lambda *args: None)
  # An earlier run's summary and table: gone until this run writes its own.
  (tmp_path / 'results').mkdir()
  for stale in ('metrics.json', 'results/table1.md', 'results/table1.json'):
    (tmp_path / stale).write_text('{}')
  study.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'metrics.json').exists()
  assert not list((tmp_path / 'results').iterdir())
  export_seed = {sub.export.dir: sub.seed for sub in stages.values() if 'export' in sub}
  assert sorted(export_seed.values()) == [0] * 4 + [1] * 4  # vae and gan, two classes, 2 seeds
  synthetic = [sub for sub in stages.values() if sub.get('train_data', 'real') != 'real']
  assert len(synthetic) == 2 * 2 * 2  # seeds x tasks x (synthetic, mixed) from the vae
  for sub in synthetic:
    assert {export_seed[d] for d in sub.synthetic_dirs.split(',')} == {sub.seed}


def test_data_no_classifier_can_use_is_refused_before_any_stage_runs(tmp_path, monkeypatch):
  # An empty no/ folder: the tumour generators would train first, for nothing.
  config = study_config.get_config('quick,smoke')
  config.cache_dir = str(tmp_path / 'cache')
  real_source = datasets.real_source
  def tumours_only(config):
    source = real_source(config)
    return source._replace(examples=source.examples.with_label(1))
  monkeypatch.setattr(datasets, 'real_source', tumours_only)
  def no_stage(*args):
    raise AssertionError('a stage ran')
  monkeypatch.setattr(study, 'run_stage', no_stage)
  with pytest.raises(ValueError, match='the real data hold no healthy slices'):
    study.train_and_evaluate(config, str(tmp_path / 'study'))


@pytest.mark.parametrize('task', ['vae_gen', 'cnn_cls', 'cvae_cls'])
def test_a_batch_larger_than_a_stage_s_training_slices_is_refused_before_any_stage_runs(
    task, tmp_path, monkeypatch):
  # (BrainCVAE's, on its healthy slices, stopped a default quick study on 60 slices a class once
  # its generators and BrainCNN stages had trained)
  config = study_config.get_config('quick,smoke')
  config.cache_dir, config.num_devices = str(tmp_path / 'cache'), 1  # (any batch splits)
  config.num_synthetic = 64  # (the synthetic-only stages' own check: enough for any batch here)
  def no_stage(*args):
    raise AssertionError('a stage ran')
  monkeypatch.setattr(study, 'run_stage', no_stage)
  source = datasets.real_source(study.sub_config(config, 'cnn_cls', 'real', 'random', 0))
  train = {t: datasets.split(study.sub_config(config, t, 'real', 'random', 0), source, p).train
           for t, p in (('cnn_cls', 'cnn'), ('cvae_cls', 'anomaly'))}
  count = {'vae_gen': len(datasets.generator_training_set(
               study.sub_config(config, 'vae_gen', 'positive', 'random', 0), source, 1)),
           'cnn_cls': len(train['cnn_cls']),
           'cvae_cls': int((source.examples.labels[train['cvae_cls']] == 0).sum())}[task]
  config.overrides[task] = {'batch_size': count + 1}
  with pytest.raises(ValueError, match=f'study stage {task} \\(random split, seed 0\\): '
                     f'batch_size={count + 1} is larger than the {count} training examples'):
    study.train_and_evaluate(config, str(tmp_path / 'study'))
  config.overrides[task] = {'batch_size': count}
  with pytest.raises(AssertionError, match='a stage ran'):  # (the largest that fits: it runs)
    study.train_and_evaluate(config, str(tmp_path / 'study'))


def test_the_study_s_own_settings_reach_every_stage():
  config = study_config.get_config('quick,smoke')
  config.dedup_threshold, config.log_every_steps, config.keep_checkpoints = 0.5, 7, 4
  config.checkpoint_every_secs, config.num_synthetic = 3.0, 20
  config.overrides.vae_gen.batch_size = config.overrides.cnn_cls.learning_rate = 2
  for task in study_config.STAGES:
    sub = study.sub_config(config, task, 'real' if task.endswith('_cls') else 'positive',
                           'grouped', 5)
    assert (sub.split, sub.seed, sub.dedup_threshold, sub.log_every_steps,
            sub.keep_checkpoints, sub.checkpoint_every_secs) == ('grouped', 5, 0.5, 7, 4, 3.0)
    assert 'export' not in sub or sub.export.num_samples == 20
  assert study.sub_config(config, 'vae_gen', 'negative', 'random', 0).batch_size == 2
  assert study.sub_config(config, 'cnn_cls', 'mixed', 'random', 0).learning_rate == 2


def test_a_study_rerun_may_change_the_settings_of_stages_it_has_not_begun(tmp_path):
  config = study_config.get_config('quick,smoke')
  workdir = str(tmp_path)
  reruns.write_config(workdir, config)
  stage = lambda *parts: str(tmp_path.joinpath('random', 'seed0', *parts))
  sub = lambda task, variant: study.sub_config(config, task, variant, 'random', 0)
  # A BrainCNN stage whose loss diverged before its first checkpoint, after its generators
  # finished: its overrides may be fixed (they had to be repeated, or the generators retrained).
  for label in ('positive', 'negative'):
    os.makedirs(stage('generators', f'vae_{label}'))
    reruns.write_config(stage('generators', f'vae_{label}'), sub('vae_gen', label))
    reporting.write_metrics_json(stage('generators', f'vae_{label}'), {'steps': 1})
  os.makedirs(stage('cnn_cls_real'))
  reruns.write_config(stage('cnn_cls_real'), sub('cnn_cls', 'real'))
  config.overrides.cnn_cls.learning_rate = 1e-3
  config.seeds, config.checkpoint_every_secs, config.knn_k = 3, 5.0, 5  # how it runs; the audit
  reruns.write_config(workdir, config)
  study.check_stages(config, workdir)
  # Rerun so, the stage begins; then it refuses what its own rerun refuses, and allows the rest.
  reruns.write_config(stage('cnn_cls_real'), sub('cnn_cls', 'real'))
  (tmp_path / 'random' / 'seed0' / 'cnn_cls_real' / 'test_scores.npz').write_bytes(b'')
  config.overrides.cnn_cls.num_epochs = 7
  study.check_stages(config, workdir)
  config.overrides.cnn_cls.learning_rate = 1e-2
  with pytest.raises(reruns.RerunRefused, match='study stage cnn_cls in .*cnn_cls_real: .*'
                     'learning_rate: 0.001 -> 0.01'):
    study.check_stages(config, workdir)
  config.overrides.cnn_cls.learning_rate = 1e-3
  # A finished stage keeps its metrics: nothing that decides them may change.
  config.overrides.vae_gen.batch_size = 2
  with pytest.raises(reruns.RerunRefused, match='study stage vae_gen in .*vae_positive: .*'
                     'batch_size'):
    study.check_stages(config, workdir)


def test_a_knn_k_the_training_slices_cannot_take_is_refused_before_any_stage_runs(
    tmp_path, monkeypatch):
  config = study_config.get_config('quick,smoke')
  config.cache_dir = str(tmp_path / 'cache')
  config.knn_k, config.num_synthetic = 17, 20  # the smoke split has fewer training slices
  def no_stage(*args):
    raise AssertionError('a stage ran')
  monkeypatch.setattr(study, 'run_stage', no_stage)
  with pytest.raises(ValueError, match='knn_k=17: .* has [0-9]+ .random split, seed 0.'):
    study.train_and_evaluate(config, str(tmp_path / 'study'))


def test_a_finished_stage_of_other_settings_is_an_error(tmp_path):
  config = study_config.get_config('quick,smoke')
  stage = str(tmp_path)
  sub = study.sub_config(config, 'cnn_cls', 'real', 'random', 0)
  reruns.write_config(stage, sub)
  reporting.write_metrics_json(stage, {'accuracy': 0.5, 'auroc': float('nan')})
  sub.cache_dir = str(tmp_path / 'elsewhere')  # how it runs: the stage is still done
  sub.synthetic_dirs = str(tmp_path / 'moved' / 'synthetic')  # so is a moved study's stage
  assert study.run_stage('cnn_cls', sub, stage) == {'accuracy': 0.5, 'auroc': None}
  sub.learning_rate = 0.5  # e.g. another version's default
  with pytest.raises(ValueError, match='learning_rate'):
    study.run_stage('cnn_cls', sub, stage)


def test_a_study_whose_seeds_share_generators_is_not_resumed(tmp_path):
  config = study_config.get_config('quick,smoke')
  (tmp_path / 'random' / 'generators' / 'vae_positive').mkdir(parents=True)  # the old layout
  with pytest.raises(ValueError, match='share one set of generators'):
    study.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_quick_study_cnn_learns_the_phantom(tmp_path, cache_dir):
  """The embedded phantom is good enough to learn from: the quick study's BrainCNN stage
  (420 phantom slices, its learning rate, epochs and patience) separates the 60 test slices.

  Measured 0.91 ROC AUC (78% accuracy here, 82% through launch.py) in about 4 minutes on 2
  cores; the phantom's version 1 lesions with these settings 0.75, and version 2 at the
  study's lr 1e-3 (20 epochs) 0.55.
  """
  sub = study.sub_config(study_config.get_config('quick'), 'cnn_cls', 'real', 'random', 0)
  sub.cache_dir = cache_dir
  sub.num_devices = 1  # not the 8 fake devices of the tests: 3x slower on 2 cores
  metrics = study.run_stage('cnn_cls', sub, str(tmp_path / 'cnn'))
  print(f"\nquick-study BrainCNN on the phantom: test ROC AUC {metrics['auroc']:.3f}, "
        f"accuracy {metrics['accuracy']:.3f}")
  assert metrics['auroc'] > 0.8 and metrics['accuracy'] > 0.65


def test_a_stage_s_refused_rerun_leaves_its_config_json(tmp_path, monkeypatch):
  from brainjax.tasks import cnn_cls
  from configs import cnn_cls as cnn_config
  stage = cnn_config.get_config('real,smoke')
  reruns.write_config(str(tmp_path), stage)
  (tmp_path / 'checkpoints' / '4').mkdir(parents=True)  # begun: a committed checkpoint
  before = (tmp_path / 'config.json').read_bytes()

  def refuse(config, workdir):
    raise reruns.RerunRefused(f'{workdir} has trained further')

  monkeypatch.setattr(cnn_cls, 'train_and_evaluate', refuse)
  stage.num_epochs = 1
  with pytest.raises(reruns.RerunRefused, match='study stage cnn_cls in .*has trained further'):
    study.run_stage('cnn_cls', stage, str(tmp_path))
  assert (tmp_path / 'config.json').read_bytes() == before
  stage.learning_rate = 0.5  # a setting a begun stage cannot take: refused as a rerun too
  with pytest.raises(reruns.RerunRefused, match='study stage cnn_cls in .*learning_rate'):
    study.run_stage('cnn_cls', stage, str(tmp_path))
  assert (tmp_path / 'config.json').read_bytes() == before


def test_a_stage_is_locked_while_it_runs(tmp_path, monkeypatch):
  from brainjax.tasks import cnn_cls
  from configs import cnn_cls as cnn_config
  stage = cnn_config.get_config('real,smoke')
  held_while_training = []

  def train(config, workdir):  # what a second launch.py in the stage folder would meet
    with pytest.raises(ValueError, match='in use by another run'):
      reruns.lock_workdir(workdir)
    held_while_training.append(workdir)
    reporting.write_metrics_json(workdir, {'accuracy': 1.0})
    return {}

  monkeypatch.setattr(cnn_cls, 'train_and_evaluate', train)
  assert study.run_stage('cnn_cls', stage, str(tmp_path / 'a')) == {'accuracy': 1.0}
  assert held_while_training == [str(tmp_path / 'a')]
  os.close(reruns.lock_workdir(str(tmp_path / 'a')))  # released when the stage ended
  # A stage another process runs: refused, naming it, and its files left as they were.
  (tmp_path / 'b').mkdir()
  other = reruns.lock_workdir(str(tmp_path / 'b'))
  try:
    with pytest.raises(ValueError, match=r'study stage cnn_cls in .*b: .*in use by another run'):
      study.run_stage('cnn_cls', stage, str(tmp_path / 'b'))
  finally:
    os.close(other)
  # A stage whose loss diverged: the error names the stage (whose overrides to change).
  def diverge(config, workdir):
    raise FloatingPointError('non-finite loss by step 2; stopped.')

  monkeypatch.setattr(cnn_cls, 'train_and_evaluate', diverge)
  with pytest.raises(FloatingPointError, match=r'study stage cnn_cls in .*c: non-finite loss'):
    study.run_stage('cnn_cls', stage, str(tmp_path / 'c'))
  assert held_while_training == [str(tmp_path / 'a')]
  assert os.listdir(tmp_path / 'b') == ['.lock']


def test_a_stage_folder_holding_other_files_is_refused_and_left_unlocked(tmp_path):
  from configs import cnn_cls as cnn_config
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='study stage cnn_cls in .*notes.txt'):
    study.run_stage('cnn_cls', cnn_config.get_config('real,smoke'), str(tmp_path))
  assert os.listdir(tmp_path) == ['notes.txt']


def test_a_stage_the_first_host_refuses_stops_the_other_hosts_before_they_train(tmp_path,
                                                                                 monkeypatch):
  # Only the first host checks a stage's folder: the others went on into the stage's training
  # and waited there for it, until a Gloo timeout's traceback.
  import jax
  from jax.experimental import multihost_utils
  from configs import vae_gen
  stage = tmp_path / 'stage'
  stage.mkdir()
  (stage / 'notes.txt').write_text('mine')
  said = []  # what each host told the others: 1 = refused
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'process_allgather',
                      lambda refused: said.append(int(refused)) or np.array([1, 0]))
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  with pytest.raises(ValueError, match='holds notes.txt but no config.json'):
    study.run_stage('vae_gen', vae_gen.get_config('positive,smoke'), str(stage))
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with pytest.raises(ValueError, match='study stage vae_gen in .*: host 0 refused the run'):
    study.run_stage('vae_gen', vae_gen.get_config('positive,smoke'), str(stage))
  assert said == [1, 0]
  assert [p.name for p in stage.iterdir()] == ['notes.txt']
