"""Examples: rows kept together by take, with_label and concatenate."""
import numpy as np
import pytest

from brainjax.data import examples


def _examples(n, start=0, masks=True):
  return examples.Examples(
      images=(np.full((n, 4, 4, 1), 0.5, np.float32)
              * np.arange(start, start + n)[:, None, None, None]),
      labels=np.arange(start, start + n, dtype=np.int32) % 2,
      ids=np.array([f's{i}' for i in range(start, start + n)]),
      masks=(np.arange(start, start + n, dtype=np.uint8)[:, None, None]
             * np.ones((1, 4, 4), np.uint8)) if masks else None)


def test_rows_of_every_array_must_match():
  with pytest.raises(ValueError, match='Examples.masks has 2 rows, images has 3'):
    examples.Examples(np.zeros((3, 4, 4, 1)), np.zeros(3), np.array(['a', 'b', 'c']),
                      np.zeros((2, 4, 4)))


def test_take_and_with_label_keep_each_slice_s_mask():
  ex = _examples(5)
  taken = ex.take(np.array([4, 1]))
  assert list(taken.ids) == ['s4', 's1']
  assert taken.masks.shape == (2, 4, 4) and list(taken.masks[:, 0, 0]) == [4, 1]
  tumour = ex.with_label(1)
  assert list(tumour.masks[:, 0, 0]) == [1, 3]


def test_concatenate_keeps_masks_only_when_every_part_has_them():
  joined = examples.concatenate([_examples(2), _examples(3, start=2)])
  assert list(joined.masks[:, 0, 0]) == [0, 1, 2, 3, 4]
  assert examples.concatenate([_examples(2), _examples(3, masks=False)]).masks is None
