"""A BrainCVAE map and region on the scan's own grid, and the overlay predict writes."""
import numpy as np
from scipy import ndimage

from brainjax.anomaly import maps as anomaly_maps
from brainjax.data import preprocess


def test_a_head_split_in_two_keeps_both_parts_and_drops_specks():
  image = np.zeros((64, 64), np.float32)
  image[8:56, 4:28] = 0.8    # one half of the head (48 x 24)
  image[8:56, 36:56] = 0.6   # the other half, 5/6 its size, beyond a dark gap
  image[2:4, 60:62] = 0.9    # a speck of text
  head = anomaly_maps.head_mask(image)
  assert head[30, 15] and head[30, 45]   # both halves are head
  assert not head[3, 61]                 # the speck is not


def test_a_region_mapped_back_keeps_its_area():
  # A 400 x 400 crop shown at 128 px: one output pixel is 3.125 x 3.125 original ones.
  info = preprocess.crop_info((500, 460), (50, 30, 450, 430), margin=0.0)
  small = np.zeros((128, 128), bool)
  small[40:60, 50:80] = True  # 20 x 30 output pixels
  back = anomaly_maps.region_to_original(small, info)
  expected = small.sum() * (info.side / 128) ** 2
  assert abs(back.sum() - expected) <= 0.03 * expected, (back.sum(), expected)


def test_overlay_is_the_grey_scan_where_the_map_is_zero_and_outlines_the_region():
  scan = np.full((40, 40), 0.5, np.float32)
  map_ = np.zeros((40, 40), np.float32)
  map_[:, 30:] = 1.0
  region = np.zeros((40, 40), bool)
  region[10:20, 10:20] = True
  rgb = anomaly_maps.overlay(scan, map_, region)
  assert rgb.dtype == np.uint8 and rgb.shape == (40, 40, 3)
  np.testing.assert_array_equal(rgb[0, 0], [128, 128, 128])     # map 0: the scan alone
  np.testing.assert_array_equal(rgb[15, 15], [128, 128, 128])   # inside the region: not filled
  np.testing.assert_array_equal(rgb[10, 15], anomaly_maps.OUTLINE_RGB)  # its edge is drawn
  assert (rgb[0, 35] != [128, 128, 128]).any()                  # map 1: heat colour


def test_the_outline_eroded_in_the_regions_box_is_the_whole_grids():
  rng = np.random.default_rng(0)
  for trial in range(40):
    h, w = rng.integers(1, 50, 2)
    region = np.zeros((h, w), bool)
    top, left = rng.integers(0, h), rng.integers(0, w)
    region[top:top + rng.integers(1, h + 1), left:left + rng.integers(1, w + 1)] = True
    region &= rng.random((h, w)) < (0.8 if trial % 2 else 1.0)  # holes, and whole blocks
    width = int(rng.integers(1, 4))
    whole = region & ~ndimage.binary_erosion(region, iterations=width, border_value=0)
    np.testing.assert_array_equal(anomaly_maps.outline(region, width), whole)
  assert not anomaly_maps.outline(np.zeros((5, 7), bool), 2).any()


def test_an_overlay_blended_in_bands_is_the_one_blended_at_once(monkeypatch):
  rng = np.random.default_rng(1)
  scan, map_ = (rng.random((45, 23)).astype(np.float32) * 1.2 - 0.1 for _ in range(2))
  region = rng.random((45, 23)) < 0.5
  with monkeypatch.context() as patch:
    # Banded first: a row left out would hold stale memory, not the answer freed last.
    patch.setattr(anomaly_maps, '_OVERLAY_BAND_PIXELS', 50)  # bands of 2 rows
    banded = anomaly_maps.overlay(scan, map_, region)
  np.testing.assert_array_equal(banded, anomaly_maps.overlay(scan, map_, region))
