"""The whole study end to end at smoke size: every stage, Table 1, quality and privacy."""
import json
import os

from brainjax.tasks import study
from configs import study as study_config


def test_study_smoke_writes_table1_and_resumes(tmp_path):
  config = study_config.get_config('quick,smoke')
  config.cache_dir = str(tmp_path / 'cache')
  workdir = str(tmp_path / 'study')
  summary = study.train_and_evaluate(config, workdir)
  results = os.path.join(workdir, 'results')
  table = open(os.path.join(results, 'table1.md')).read()
  for row in ('| CNN | real', '| CNN | synthetic (VAE)', '| CNN | mixed (VAE)',
              '| VAE (GIAEM) | real', '| VAE (DBSCAN) | mixed (VAE)',
              '| VAE (Global KMeans) | synthetic (VAE)'):
    assert row in table, row
  assert '96.67 / 95.42 / 97.99 / 96.69' in table  # the study's CNN/real row beside ours
  rows = json.load(open(os.path.join(results, 'table1.json')))
  assert {r['train_data'] for r in rows['table1']} == {'real', 'synthetic', 'mixed'}
  assert set(rows['generators']) == {'random/vae_positive', 'random/vae_negative'}
  assert 0 <= rows['generators']['random/vae_positive']['tumour_visibility'] <= 1
  assert os.path.exists(os.path.join(results, 'figures', 'samples_random_vae_positive.png'))
  assert 'random/CNN/real/accuracy' in summary
  # Every stage left metrics.json: a second call reruns no stage and gives the same table.
  stage_files = sorted(os.path.join(d, 'metrics.json') for d, _, fs in os.walk(workdir)
                       if 'metrics.json' in fs and d != workdir)
  assert len(stage_files) == 8  # 2 generators, 3 CNNs, 3 CVAEs
  stamps = [os.path.getmtime(f) for f in stage_files]
  again = study.train_and_evaluate(config, workdir)
  assert json.dumps(again, sort_keys=True) == json.dumps(summary, sort_keys=True)  # NaN-safe
  assert [os.path.getmtime(f) for f in stage_files] == stamps
