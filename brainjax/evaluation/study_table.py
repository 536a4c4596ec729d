"""Table 1 of the study, recomputed: mean ± sample std over seeds, beside the published numbers."""
import csv
import json
import os

import numpy as np

from brainjax.evaluation import baseline

# The study's Table 1 (accuracy, precision, recall, F1 in %). Its VAE rows are class-balanced
# (macro) averages (see classification.py): table1.md compares them with our F1
# (class-balanced) column, table1.csv holds every macro_* column. Its
# synthetic data is the VAE's: it discarded its GAN's samples (section "Generative task").
PUBLISHED = {
    ('CNN', 'real'): (96.67, 95.42, 97.99, 96.69),
    ('CNN', 'synthetic'): (58.16, 57.53, 56.94, 57.24),
    ('CNN', 'mixed'): (49.97, 49.98, 99.93, 66.64),
    ('VAE (GIAEM)', 'real'): (60.44, 60.95, 67.11, 56.76),
    ('VAE (GIAEM)', 'synthetic'): (80.08, 68.26, 66.22, 67.09),
    ('VAE (GIAEM)', 'mixed'): (81.24, 69.99, 64.11, 65.95),
    ('VAE (Global KMeans)', 'real'): (82.93, 73.55, 67.58, 69.66),
    ('VAE (Global KMeans)', 'synthetic'): (79.39, 68.26, 69.44, 68.80),
    ('VAE (Global KMeans)', 'mixed'): (78.8, 39.88, 49.27, 44.08),
}
# The Table 1 row of each anomaly rule.
RULE_ROW_NAMES = {'giaem': 'VAE (GIAEM)', 'dbscan': 'VAE (DBSCAN)', 'kmeans': 'VAE (KMeans)',
                  'global_kmeans': 'VAE (Global KMeans)'}
# The learning-free row (evaluation/baseline.py) a BrainCNN run on real slices adds.
NEAREST_NEIGHBOUR_ROW = 'Thumbnail 1-NN (no learning)'
COLUMNS = ('accuracy', 'precision', 'recall', 'f1', 'auroc', 'macro_precision',
           'macro_recall', 'macro_f1')


def row_keys(task, m):
  """(model name, key prefix) of each Table 1 row a classifier run (task 'cnn_cls' or
  'cvae_cls', its metrics `m`) gives: the row's metrics are m[prefix + column]. A BrainCNN run
  on real slices also gives the nearest-neighbour row of its split."""
  if task == 'cnn_cls':
    return [('CNN', '')] + ([(NEAREST_NEIGHBOUR_ROW, baseline.PREFIX)]
                            if baseline.recorded(m) else [])
  return [(name, f'{rule}_') for rule, name in RULE_ROW_NAMES.items() if f'{rule}_accuracy' in m]


def rows_of_run(task, m):
  """(model name, {column: value}) pairs a classifier run contributes to the table (see
  row_keys)."""

  def value(key):  # (a stage finished before macro_* was named so holds weighted_*)
    return m.get(key, m.get(key.replace('macro_', 'weighted_')))

  return [(name, {c: value(prefix + c) for c in COLUMNS}) for name, prefix in row_keys(task, m)]


RUN_TABLE_HEADER = ('| Model | Train data | Accuracy % | Precision % | Recall % | F1 % | '
                    'ROC AUC % |\n| --- | --- | --- | --- | --- | --- | --- |')


def run_table(task, train_data, metrics):
  """The markdown rows, under RUN_TABLE_HEADER, a classifier run prints: Table 1's first
  columns in percent."""
  rows = [f'| {model} | {train_data} | '
          + ' | '.join(f'{values[c] * 100:.2f}' for c in COLUMNS[:5]) + ' |'
          for model, values in rows_of_run(task, metrics)]
  return '\n'.join([RUN_TABLE_HEADER, *rows])


def _defined(value):
  """A float, or None (JSON's null, the table's '–') where it is undefined."""
  return float(value) if np.isfinite(value) else None


def aggregate(results, scale=100.0):
  """Groups runs by (split, model, train data, synthetic source) and averages over seeds.

  Values in percent (scale 100, the tables) or as fractions (scale 1, metrics.json).
  """
  groups = {}
  for run in results:
    for model, values in rows_of_run(run['task'], run['metrics']):
      key = (run['split'], model, run['train_data'], run['source'])
      groups.setdefault(key, []).append(values)
  table = []
  for (split, model, train_data, source), runs in groups.items():
    row = dict(split=split, model=model, train_data=train_data, source=source, seeds=len(runs))
    for c in COLUMNS:
      # None is metrics.json's NaN (undefined, e.g. ROC AUC of a one-class test set): a seed
      # with an undefined value makes the mean over all seeds undefined, not the mean of fewer.
      values = np.array([np.nan if r[c] is None else r[c] for r in runs], np.float64) * scale
      row[c] = _defined(values.mean())
      # the sample standard deviation (ddof=1): seeds are a sample of the runs one could do
      row[f'{c}_std'] = _defined(values.std(ddof=1)) if len(values) > 1 else None
    published = PUBLISHED.get((model, train_data)) if source in ('-', 'vae') else None
    for name, value in zip(('accuracy', 'precision', 'recall', 'f1'), published or [None] * 4):
      row[f'study_{name}'] = value
    table.append(row)
  return table


GAP_COLUMNS = ('accuracy', 'auroc')


def synthetic_gaps(results, scale=100.0):
  """Train on synthetic, test on real: each synthetic row's value minus the real row's, in
  percentage points (scale 100) or as a fraction (scale 1), paired by seed (same split, model
  and test slices); mean ± sample std.

  A seed lacking either run, or with an undefined value, is left out of that column.
  """
  real, synthetic = {}, {}
  for run in results:
    for model, values in rows_of_run(run['task'], run['metrics']):
      if run['train_data'] == 'real':
        real[(run['split'], model, run['seed'])] = values
      elif run['train_data'] == 'synthetic':
        synthetic.setdefault((run['split'], model, run['source']), {})[run['seed']] = values
  gaps = []
  for (split, model, source), seeds in synthetic.items():
    row = dict(split=split, model=model, source=source)
    for c in GAP_COLUMNS:
      pairs = [(v[c], real[(split, model, seed)][c]) for seed, v in seeds.items()
               if (split, model, seed) in real]
      diffs = np.array([scale * (a - b) for a, b in pairs if a is not None and b is not None
                        and np.isfinite(a) and np.isfinite(b)], np.float64)
      row[f'{c}_gap'] = float(diffs.mean()) if diffs.size else None
      row[f'{c}_gap_std'] = float(diffs.std(ddof=1)) if diffs.size > 1 else None
      row[f'{c}_gap_seeds'] = int(diffs.size)
    gaps.append(row)
  return gaps


def _cell(row, c):
  if row[c] is None:
    return '–'
  return f'{row[c]:.2f}' if row[c + '_std'] is None else f'{row[c]:.2f} ± {row[c + "_std"]:.2f}'


def train_data_label(row):
  """A row's training data as Table 1 names it: 'real', or e.g. 'synthetic (VAE)'."""
  return row['train_data'] + ('' if row['source'] == '-' else f' ({row["source"].upper()})')


def markdown(table, quality, gaps=()):
  lines = ['| Split | Model | Train data | Accuracy | Precision | Recall | F1 | ROC AUC | '
           'F1 (class-balanced) | Study: Acc / P / R / F1 |', '|' + '---|' * 10]
  for r in table:
    data = train_data_label(r)
    study = ('–' if r['study_accuracy'] is None else ' / '.join(
        f'{r["study_" + k]:.2f}' for k in ('accuracy', 'precision', 'recall', 'f1')))
    cells = [_cell(r, c) for c in ('accuracy', 'precision', 'recall', 'f1', 'auroc', 'macro_f1')]
    lines.append(f'| {r["split"]} | {r["model"]} | {data} | ' + ' | '.join(cells) + f' | {study} |')
  lines += ['', 'Precision, recall and F1 count tumour as positive; the study\'s VAE rows are '
            'class-balanced averages, comparable with the F1 (class-balanced) column. '
            f'Mean ± std over {max((r["seeds"] for r in table), default=0)} seed(s); test '
            'sets are real slices only.']
  if gaps:
    lines += ['', '## Train on synthetic, test on real: gap to the real row', '',
              '| Split | Model | Synthetic data | Accuracy gap (pp) | ROC AUC gap (pp) | Seeds |',
              '|' + '---|' * 6]
    for g in gaps:
      cells = [_cell(g, f'{c}_gap') for c in GAP_COLUMNS]
      # (a column's seeds: a seed without a ROC AUC counts for the accuracy gap alone)
      counts = [g[f'{c}_gap_seeds'] for c in GAP_COLUMNS]
      seeds = str(counts[0]) if len(set(counts)) == 1 else ' / '.join(map(str, counts))
      lines.append(f'| {g["split"]} | {g["model"]} | {g["source"].upper()} | ' + ' | '.join(cells)
                   + f' | {seeds} |')
    lines += ['', 'Synthetic-only minus real-only, per seed on the same test slices (Seeds: '
              'accuracy / ROC AUC where they differ).']
  if quality:
    keys = sorted({k for row in quality.values() for k in row})
    lines += ['', '## Generators: quality (BrainCNN features) and privacy (distance to closest '
              'record)', '', '| Generator | ' + ' | '.join(keys) + ' |',
              '|' + '---|' * (len(keys) + 1)]
    for name, row in sorted(quality.items()):
      lines.append(f'| {name} | ' + ' | '.join(
          '–' if k not in row else f'{row[k]:.4g}' for k in keys) + ' |')
  return '\n'.join(lines) + '\n'


def write_tables(out_dir, results, quality):
  """results/table1.md, .csv and .json; returns their paths (markdown first)."""
  os.makedirs(out_dir, exist_ok=True)
  table, gaps = aggregate(results), synthetic_gaps(results)
  paths = [os.path.join(out_dir, f'table1.{ext}') for ext in ('md', 'csv', 'json')]
  with open(paths[0], 'w') as f:
    f.write(markdown(table, quality, gaps))
  with open(paths[1], 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(table[0]) if table else ['split'])
    writer.writeheader()
    writer.writerows(table)
  with open(paths[2], 'w') as f:
    json.dump({'table1': table, 'synthetic_gap': gaps, 'generators': quality}, f, indent=1)
  return paths


def flat_summary(results, quality):
  """A flat dict for the study's metrics.json, in fractions as every run's metrics.json: one key
  per table cell and its `_std` over the seeds, each synthetic row's gap to the real row and its
  `_gap_std` (None where undefined, or from fewer than two seeds), and the generators' rows."""
  flat = {}
  for row in aggregate(results, scale=1.0):
    prefix = f'{row["split"]}/{row["model"]}/{row["train_data"]}' + (
        '' if row['source'] == '-' else f'/{row["source"]}')
    flat.update({f'{prefix}/{c}{s}': row[f'{c}{s}'] for c in COLUMNS for s in ('', '_std')})
  for row in synthetic_gaps(results, scale=1.0):
    prefix = f'{row["split"]}/{row["model"]}/synthetic/{row["source"]}'
    flat.update({f'{prefix}/{c}_gap{s}': row[f'{c}_gap{s}'] for c in GAP_COLUMNS
                 for s in ('', '_std')})
  for name, row in quality.items():
    flat.update({f'{name}/{k}': v for k, v in row.items()})
  return flat
