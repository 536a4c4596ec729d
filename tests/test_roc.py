"""ROC curves: their area is the reported ROC AUC (ties included), and the figure is written."""
import numpy as np
from PIL import Image
import pytest

from brainjax.evaluation import classification
from brainjax.evaluation import roc


@pytest.mark.parametrize('levels', [3, 20, None])  # heavy ties, some, none
def test_curve_area_is_the_reported_auroc(levels):
  rng = np.random.default_rng(levels or 0)
  labels = rng.integers(0, 2, 200)
  scores = rng.normal(size=200) + labels
  if levels:
    scores = np.round(scores * levels / 4) / levels
  fpr, tpr = roc.roc_curve(labels, scores)
  assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
  assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
  assert roc.curve_area(fpr, tpr) == pytest.approx(classification.auroc(labels, scores),
                                                   abs=1e-12)


def test_perfect_constant_and_one_class_scores():
  assert roc.make_curve('x', [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]).auc == 1.0
  assert roc.make_curve('x', [0, 1, 0, 1], [5, 5, 5, 5]).auc == 0.5  # one tie: the diagonal
  with pytest.raises(ValueError, match='both classes'):
    roc.roc_curve([1, 1], [0.2, 0.3])


def test_figure_is_a_png(tmp_path):
  curves = [roc.make_curve('CNN, real', [0, 1, 0, 1], [0.1, 0.7, 0.4, 0.9])]
  path = roc.save_roc_figure(str(tmp_path / 'sub' / 'roc.png'), curves, title='t')
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  with Image.open(path) as png:
    assert np.asarray(png.convert('L')).std() > 10  # (drawn, not a blank canvas)
  with pytest.raises(ValueError, match='at least one curve'):
    roc.save_roc_figure(str(tmp_path / 'none.png'), [])


def test_a_hand_worked_curve():
  # Scores 0.9 (tumour), 0.2 (healthy), 0.1 (tumour): the first threshold finds half the
  # tumours and no healthy slice, the second calls the healthy slice too, the last finds all.
  fpr, tpr = roc.roc_curve([0, 1, 1], [0.2, 0.1, 0.9])
  np.testing.assert_array_equal(fpr, [0, 0, 1, 1])
  np.testing.assert_array_equal(tpr, [0, 0.5, 0.5, 1])


def test_labels_other_than_0_and_1_are_refused_as_auroc_refuses_them():
  for labels in ([0, 1, 2], [0, 1, -1], [0, 0.5, 1]):
    with pytest.raises(ValueError, match=r'labels must hold only 0 \(healthy\) and 1'):
      roc.roc_curve(labels, [0.1, 0.2, 0.3])


def test_legend_names_each_curve_with_its_auc(tmp_path, figures_made):
  made = figures_made(roc)
  curve = roc.make_curve('cnn', [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])  # AUC 3/4
  roc.save_roc_figure(str(tmp_path / 'roc.png'), [curve])
  texts = [t.get_text() for t in made[0].axes[0].get_legend().get_texts()]
  assert texts == ['chance (AUC 0.500)', 'cnn (AUC 0.750)']
