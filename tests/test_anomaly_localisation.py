"""Dice and IoU against hand-computed overlaps."""
import math

import numpy as np
import pytest

from brainjax.anomaly import localisation


def test_hand_computed():
  masks = np.zeros((3, 4, 4), np.uint8)
  masks[0, :2, :2] = 1  # 4 pixels
  masks[1, 0, 0] = 1
  predicted = np.zeros((3, 16), bool)
  predicted[0, [0, 1, 2]] = True  # pixels (0,0), (0,1) hit, (0,2) miss
  # image 1 predicts nothing; image 2: nothing predicted, nothing true
  dice, iou = localisation.dice_iou(predicted, masks)
  np.testing.assert_allclose(dice, [2 * 2 / (3 + 4), 0.0, 1.0])
  np.testing.assert_allclose(iou, [2 / 5, 0.0, 1.0])
  mean = localisation.mean_localisation(predicted, masks, labels=[1, 1, 0])
  assert mean['dice'] == pytest.approx((4 / 7 + 0) / 2)
  assert mean['iou'] == pytest.approx((2 / 5 + 0) / 2)


def test_no_tumour_images_gives_nan():
  mean = localisation.mean_localisation(np.zeros((2, 4), bool), np.zeros((2, 2, 2)), [0, 0])
  assert math.isnan(mean['dice']) and math.isnan(mean['iou'])


def test_shape_mismatch():
  with pytest.raises(ValueError, match='differ'):
    localisation.dice_iou(np.zeros((2, 9), bool), np.zeros((2, 4, 4)))


def test_a_non_finite_mask_is_refused():
  masks = np.zeros((1, 2, 2))
  masks[0, 0, 0] = np.nan
  with pytest.raises(ValueError, match='NaN or inf'):
    localisation.dice_iou(np.zeros((1, 4), bool), masks)


def test_any_nonzero_mask_value_is_tumour():
  predicted = np.array([[True, False, False, False]])
  masks = np.array([[-1.0, 0.0, 0.0, 0.0]])  # nonzero = tumour, as documented
  dice, iou = localisation.dice_iou(predicted, masks)
  assert dice.tolist() == [1.0] and iou.tolist() == [1.0]
