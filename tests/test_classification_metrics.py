"""Classification metrics against hand-computed confusion matrices and scikit-learn."""
import csv
import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from brainjax.evaluation import classification


def test_hand_computed_confusion_matrix():
  #            tp tp tp fn fp tn tn tn tn tn
  labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
  preds = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
  m = classification.classification_metrics(labels, preds)
  assert (m['tn'], m['fp'], m['fn'], m['tp']) == (5, 1, 1, 3)
  assert m['accuracy'] == pytest.approx(8 / 10)
  assert m['precision'] == pytest.approx(3 / 4)
  assert m['recall'] == pytest.approx(3 / 4)
  assert m['f1'] == pytest.approx(3 / 4)
  assert m['specificity'] == pytest.approx(5 / 6)
  assert m['balanced_accuracy'] == pytest.approx((3 / 4 + 5 / 6) / 2)
  # healthy class: precision 5/6 (tn / (tn + fn)), recall 5/6, f1 5/6
  assert m['macro_precision'] == pytest.approx((3 / 4 + 5 / 6) / 2)
  assert m['macro_recall'] == pytest.approx((3 / 4 + 5 / 6) / 2)
  assert m['macro_f1'] == pytest.approx((3 / 4 + 5 / 6) / 2)
  assert 'auroc' not in m


def test_study_table1_row_is_macro_average():
  # 'VAE (Global KMeans), Mixed': almost everything predicted as the majority class.
  # Majority share 0.7997, 1.46% of it flipped, minority never found.
  n_major, n_minor = 7997, 2003
  flipped = 117
  labels = np.r_[np.zeros(n_major, int), np.ones(n_minor, int)]
  preds = np.r_[np.zeros(n_major - flipped, int), np.ones(flipped, int), np.zeros(n_minor, int)]
  m = classification.classification_metrics(labels, preds)
  assert 100 * m['accuracy'] == pytest.approx(78.8, abs=0.05)
  assert 100 * m['macro_precision'] == pytest.approx(39.88, abs=0.05)
  assert 100 * m['macro_recall'] == pytest.approx(49.27, abs=0.05)
  assert 100 * m['macro_f1'] == pytest.approx(44.08, abs=0.05)


@pytest.mark.parametrize('seed', range(6))
def test_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 60))
  labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
  scores = np.round(rng.random(n) + 0.5 * labels, 1)  # rounding creates ties
  preds = (scores > rng.uniform(0.3, 1.2)).astype(int)
  m = classification.classification_metrics(labels, preds, scores)
  kw = dict(zero_division=0)
  assert m['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds))
  assert m['precision'] == pytest.approx(skm.precision_score(labels, preds, **kw))
  assert m['recall'] == pytest.approx(skm.recall_score(labels, preds, **kw))
  assert m['f1'] == pytest.approx(skm.f1_score(labels, preds, **kw))
  assert m['balanced_accuracy'] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
  assert m['specificity'] == pytest.approx(skm.recall_score(labels, preds, pos_label=0, **kw))
  macro = dict(average='macro', **kw)  # over the classes in labels or predictions
  assert m['macro_precision'] == pytest.approx(skm.precision_score(labels, preds, **macro))
  assert m['macro_recall'] == pytest.approx(skm.recall_score(labels, preds, **macro))
  assert m['macro_f1'] == pytest.approx(skm.f1_score(labels, preds, **macro))
  tn, fp, fn, tp = skm.confusion_matrix(labels, preds, labels=[0, 1]).ravel()
  assert (m['tn'], m['fp'], m['fn'], m['tp']) == (tn, fp, fn, tp)
  assert m['auroc'] == pytest.approx(skm.roc_auc_score(labels, scores))


def test_zero_division_gives_zero():
  labels = [1, 1, 0, 0]
  m = classification.classification_metrics(labels, [0, 0, 0, 0])
  assert m['precision'] == 0.0 and m['recall'] == 0.0 and m['f1'] == 0.0
  assert m['f1'] == skm.f1_score(labels, [0, 0, 0, 0], zero_division=0)
  assert m['macro_precision'] == pytest.approx(
      skm.precision_score(labels, [0, 0, 0, 0], average='macro', zero_division=0))


def test_single_class_auroc_is_nan_and_balanced_accuracy_like_sklearn():
  labels, preds = [1, 1, 1], [1, 0, 1]
  m = classification.classification_metrics(labels, preds, scores=[0.2, 0.1, 0.3])
  assert math.isnan(m['auroc'])
  with pytest.warns(UserWarning):
    expected = skm.balanced_accuracy_score(labels, preds)
  assert m['balanced_accuracy'] == pytest.approx(expected)
  for labels, preds in (([0, 0, 0], [0, 0, 0]), ([1, 1, 1], [1, 1, 1]), ([1, 1, 1], [1, 0, 1])):
    m = classification.classification_metrics(labels, preds)
    for name in ('precision', 'recall', 'f1'):  # all healthy, all called healthy: 1, not 0.5
      assert m[f'macro_{name}'] == pytest.approx(getattr(skm, f'{name}_score')(
          labels, preds, average='macro', zero_division=0)), (labels, preds, name)


def test_vectorised_counts_match_scalar_path():
  rng = np.random.default_rng(0)
  counts = rng.integers(0, 20, size=(4, 7, 3))
  vec = classification.metrics_from_confusion(*counts[0:4].reshape(4, 21))
  for k in range(21):
    tn, fp, fn, tp = counts.reshape(4, 21)[:, k]
    if tn + fp + fn + tp == 0:
      continue
    labels = np.r_[np.zeros(tn + fp, int), np.ones(fn + tp, int)]
    preds = np.r_[np.zeros(tn, int), np.ones(fp, int), np.zeros(fn, int), np.ones(tp, int)]
    scalar = classification.classification_metrics(labels, preds)
    for name in classification.METRIC_NAMES:
      assert vec[name][k] == scalar[name]


@pytest.mark.parametrize('labels, preds, message', [
    ([0, 2], [0, 1], 'only 0'),
    ([0, 1], [0, 1, 1], 'differ'),
    ([[0, 1]], [[0, 1]], '1-D'),
    ([], [], 'at least one'),
])
def test_bad_input_raises(labels, preds, message):
  with pytest.raises(ValueError, match=message):
    classification.classification_metrics(labels, preds)


@pytest.mark.parametrize('labels, scores, message', [
    ([-1, 1], [0.2, 0.8], 'only 0'),  # (as booleans these gave NaN; scikit-learn says 1.0)
    ([0, 1], [0.2, float('nan')], 'NaN'),
    ([0, 1], [0.2], 'differ'),
])
def test_auroc_refuses_what_it_cannot_score(labels, scores, message):
  with pytest.raises(ValueError, match=message):
    classification.auroc(labels, scores)


def test_table1_spread_over_seeds_is_the_sample_std():
  from brainjax.evaluation import study_table
  runs = [dict(task='cnn_cls', split='random', train_data='real', source='-',
               metrics={'accuracy': a}) for a in (0.6, 0.7, 0.8)]
  (row,) = study_table.aggregate(runs)
  assert row['accuracy'] == pytest.approx(70.0) and row['accuracy_std'] == pytest.approx(10.0)


def test_table1_row_puts_each_value_in_its_column(tmp_path):
  from brainjax.evaluation import study_table
  values = dict(accuracy=0.11, precision=0.22, recall=0.33, f1=0.44, auroc=0.55,
                macro_precision=0.66, macro_recall=0.77, macro_f1=0.88)
  rule = {f'giaem_{k}': v for k, v in values.items()}
  runs = [dict(task='cnn_cls', split='random', train_data='real', source='-', seed=0,
               metrics=values),
          dict(task='cvae_cls', split='random', train_data='mixed', source='vae', seed=0,
               metrics=rule)]
  md_path, csv_path, _ = study_table.write_tables(str(tmp_path), runs, {})
  table = open(md_path).read()
  assert ('| random | CNN | real | 11.00 | 22.00 | 33.00 | 44.00 | 55.00 | 88.00 | '
          '96.67 / 95.42 / 97.99 / 96.69 |') in table
  assert ('| random | VAE (GIAEM) | mixed (VAE) | 11.00 | 22.00 | 33.00 | 44.00 | 55.00 | 88.00 | '
          '81.24 / 69.99 / 64.11 / 65.95 |') in table
  cnn, _ = csv.DictReader(open(csv_path))
  assert ({k: float(cnn[k]) for k in values}
          == pytest.approx({k: 100 * v for k, v in values.items()}))


def test_table1_reads_a_stage_finished_before_the_macro_names():
  # A resumed study reuses finished stages as they are: theirs hold weighted_* (the same values).
  from brainjax.evaluation import study_table
  runs = [dict(task='cnn_cls', split='random', train_data='real', source='-', seed=0,
               metrics={'accuracy': 0.5, 'weighted_f1': 0.25}),
          dict(task='cvae_cls', split='random', train_data='real', source='-', seed=0,
               metrics={'giaem_accuracy': 0.5, 'giaem_weighted_f1': 0.75})]
  cnn, giaem = study_table.aggregate(runs)
  assert (cnn['macro_f1'], giaem['macro_f1']) == (25.0, 75.0)


def test_table1_sets_the_study_s_numbers_beside_its_vae_synthetic_rows_only():
  # The study discarded its GAN's samples: its synthetic rows are the VAE's.
  from brainjax.evaluation import study_table
  runs = [dict(task='cnn_cls', split='random', train_data='synthetic', source=source,
               metrics={'accuracy': 0.6}) for source in ('vae', 'gan')]
  vae, gan = study_table.aggregate(runs)
  assert (vae['source'], vae['study_accuracy']) == ('vae', 58.16)
  assert (gan['source'], gan['study_accuracy']) == ('gan', None)


@pytest.mark.parametrize('undefined', [math.nan, None])  # a fresh run's NaN, a resumed run's null
def test_table1_cell_with_an_undefined_seed_is_undefined(undefined):
  from brainjax.evaluation import study_table
  runs = [dict(task='cnn_cls', split='random', train_data='real', source='-',
               metrics={'accuracy': 0.8, 'auroc': auroc}) for auroc in (0.9, undefined)]
  (row,) = study_table.aggregate(runs)
  assert row['seeds'] == 2 and row['auroc'] is None and row['auroc_std'] is None
  assert '| – |' in study_table.markdown([row], {})
  (one,) = study_table.aggregate(runs[:1])
  assert one['accuracy'] == pytest.approx(80.0) and one['accuracy_std'] is None
  assert '| 80.00 |' in study_table.markdown([one], {})


def test_synthetic_gap_is_paired_by_seed(tmp_path):
  from brainjax.evaluation import study_table

  def run(train_data, source, seed, accuracy, auroc=None):
    return dict(task='cnn_cls', split='grouped', train_data=train_data, source=source, seed=seed,
                metrics={'accuracy': accuracy, 'auroc': auroc})

  runs = [run('real', '-', 0, 0.90, 0.95), run('real', '-', 1, 0.80, 0.85),
          run('synthetic', 'vae', 0, 0.60, 0.70), run('synthetic', 'vae', 1, 0.70),
          run('synthetic', 'gan', 0, 0.50, math.nan), run('mixed', 'vae', 0, 0.99)]
  vae, gan = study_table.synthetic_gaps(runs)
  assert (vae['source'], vae['accuracy_gap_seeds']) == ('vae', 2)
  # per seed -30 and -10 points: mean -20, sample std 14.14 (not the gap of the means' spread)
  assert vae['accuracy_gap'] == pytest.approx(-20.0)
  assert vae['accuracy_gap_std'] == pytest.approx(np.std([-30.0, -10.0], ddof=1))
  assert vae['auroc_gap'] == pytest.approx(-25.0) and vae['auroc_gap_seeds'] == 1
  assert vae['auroc_gap_std'] is None
  assert gan['accuracy_gap'] == pytest.approx(-40.0) and gan['auroc_gap'] is None  # (NaN: left out)
  md_path, _, json_path = study_table.write_tables(str(tmp_path), runs, {})
  # (the ROC AUC gap is seed 0's alone: its row says so)
  assert '| grouped | CNN | VAE | -20.00 ± 14.14 | -25.00 | 2 / 1 |' in open(md_path).read()
  assert '| grouped | CNN | GAN | -40.00 | – | 1 / 0 |' in open(md_path).read()
  assert len(json.load(open(json_path))['synthetic_gap']) == 2
  # metrics.json: fractions as every run's, undefined cells null, the spread over seeds.
  flat = study_table.flat_summary(runs, {})
  assert flat['grouped/CNN/synthetic/vae/accuracy_gap'] == pytest.approx(-0.2)
  assert flat['grouped/CNN/synthetic/vae/accuracy_gap_std'] == pytest.approx(
      np.std([-0.3, -0.1], ddof=1))
  assert flat['grouped/CNN/synthetic/gan/auroc_gap'] is None
  assert flat['grouped/CNN/synthetic/gan/accuracy_gap_std'] is None  # (one seed)
  assert flat['grouped/CNN/real/accuracy'] == pytest.approx(0.85)
  assert flat['grouped/CNN/real/accuracy_std'] == pytest.approx(np.std([0.9, 0.8], ddof=1))
  assert flat['grouped/CNN/synthetic/vae/auroc'] is None  # seed 1 has none
  assert flat['grouped/CNN/mixed/vae/accuracy'] == 0.99
  assert flat['grouped/CNN/mixed/vae/accuracy_std'] is None


@pytest.mark.parametrize('labels, preds', [([0, 0, 0, 0], [1, 0, 0, 0]), ([1, 1, 1], [0, 1, 1])])
def test_macro_averages_count_a_class_seen_only_in_the_predictions(labels, preds):
  m = classification.classification_metrics(labels, preds)
  for name in ('precision', 'recall', 'f1'):
    assert m[f'macro_{name}'] == pytest.approx(getattr(skm, f'{name}_score')(
        labels, preds, average='macro', zero_division=0))
