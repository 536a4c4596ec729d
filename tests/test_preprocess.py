"""Preprocessing (study 5.1): head box, centring, resize, intensity; inverse mapping."""

import numpy as np
import pytest
from scipy import spatial

from brainjax.data import phantom
from brainjax.data import preprocess


def _disk_image(h, w, cy, cx, r, background=0.0, value=0.8):
  yy, xx = np.mgrid[0:h, 0:w]
  image = np.full((h, w), background, np.float32)
  image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = value
  return image


def _dice(a, b):
  a, b = a.astype(bool), b.astype(bool)
  return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.parametrize('shape', [(16, 16), (37, 90), (300, 220), (3000, 2000), (16, 192)])
def test_any_size_gives_size_square_in_unit_range(shape):
  h, w = shape
  image = _disk_image(h, w, h * 0.45, w * 0.55, 0.3 * min(h, w) + 1)
  out, info = preprocess.preprocess(image, size=128)
  assert out.shape == (128, 128) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() > 0.5
  assert info.orig_shape == shape


def test_head_is_centred_with_margin_and_box_is_tight():
  image = _disk_image(300, 400, 100, 120, 60)  # off-centre head on a wide canvas
  out, info = preprocess.preprocess(image, size=128, margin=0.1)
  # Tight to about 2 px of the <= 192 px copy the box is searched on (here 4 px).
  assert abs(info.top - 40) <= 5 and abs(info.bottom - 160) <= 5
  assert abs(info.left - 60) <= 5 and abs(info.right - 180) <= 5
  rows, cols = np.nonzero(out > 0.5)
  assert abs(rows.mean() - 63.5) < 2 and abs(cols.mean() - 63.5) < 2
  # The box's longer side plus a 10% margin on each side fills the output.
  assert abs(info.side - round(1.2 * max(info.bottom - info.top, info.right - info.left))) <= 1
  assert abs((rows.max() - rows.min() + 1) - 120 * 128 / info.side) < 2


def test_grey_noisy_background_text_and_frame_are_ignored():
  rng = np.random.default_rng(0)
  image = _disk_image(256, 300, 140, 160, 70, background=0.25, value=0.7)
  image += rng.normal(0, 0.04, image.shape).astype(np.float32)
  image[5:12, 5:60] = 1.0  # burnt-in text block in a corner
  image[0, :] = image[-1, :] = 1.0  # frame lines
  image[:, 0] = image[:, -1] = 1.0
  out, info = preprocess.preprocess(np.clip(image, 0, 1))
  assert abs(info.top - 70) <= 4 and abs(info.bottom - 210) <= 4
  assert abs(info.left - 90) <= 4 and abs(info.right - 230) <= 4
  assert out[:5, :5].max() == 0.0  # the margin
  # The file's grey background inside the crop also becomes ~0 (shared background).
  assert np.median(out[7:14, 7:14]) < 0.05
  # The head fills the range (its 99.5th percentile, noise included, maps to 1).
  assert 0.75 < np.median(out[54:74, 54:74]) < 0.95


def test_rgb_and_uint8_inputs_match_gray():
  gray = (_disk_image(120, 150, 60, 70, 40) * 255).astype(np.uint8)
  rgb = np.repeat(gray[..., None], 3, axis=-1)
  a, info_a = preprocess.preprocess(gray)
  b, info_b = preprocess.preprocess(rgb)
  np.testing.assert_allclose(a, b, atol=1e-6)
  assert info_a == info_b


def test_an_image_of_burnt_in_text_only_holds_no_head():
  from PIL import Image, ImageDraw
  canvas = Image.new('L', (256, 256))
  draw = ImageDraw.Draw(canvas)
  for row in range(8):
    draw.text((10, 10 + 30 * row), f'PATIENT 0{row} L R 1.5T SE TR=500', fill=255)
  image = np.asarray(canvas, np.float32) / 255
  assert (image > 0.5).mean() > 0.02  # more ink than the near-blank limit (0.5%)
  with pytest.raises(preprocess.BlankImage, match='no head: its largest region is'):
    preprocess.preprocess(image)


@pytest.mark.parametrize('image', [
    np.zeros((64, 64)), np.full((64, 64), 0.6), np.full((3, 3), 0.2),
    np.random.default_rng(0).normal(0.1, 0.01, (128, 128)).clip(0, 1),
])
def test_blank_and_near_blank_raise(image):
  with pytest.raises(preprocess.BlankImage):
    preprocess.preprocess(image)


@pytest.mark.parametrize('shape', [(12, 12), (15, 15), (1, 300), (10, 5000), (322, 116400)])
def test_too_small_or_too_narrow_is_no_head(shape):
  # Pure noise this small passed as a head (no smoothing, so no noise estimate), and the
  # strip's head box asked for a 116400 px square canvas (43 GiB).
  noise = np.random.default_rng(0).random(shape, np.float32)
  with pytest.raises(preprocess.BlankImage, match='too small or too narrow'):
    preprocess.preprocess(noise)
  h, w = shape
  with pytest.raises(preprocess.BlankImage, match='too small or too narrow'):
    preprocess.preprocess(_disk_image(h, w, h / 2, w / 2, min(h, w) / 2))


def test_tiny_speck_is_near_blank():
  image = np.zeros((200, 200), np.float32)
  image[100:103, 100:103] = 1.0
  with pytest.raises(preprocess.BlankImage, match='blank'):
    preprocess.preprocess(image)


def test_bad_arguments():
  image = _disk_image(50, 50, 25, 25, 15)
  with pytest.raises(ValueError, match=r'margin must be in \[0, 1\), got 1.5'):
    preprocess.preprocess(image, margin=1.5)
  with pytest.raises(ValueError, match='size must be a positive integer, got 0'):
    preprocess.preprocess(image, size=0)


@pytest.mark.parametrize('seed,index', [(0, 1), (1, 4), (2, 7), (3, 3)])
def test_region_maps_back_onto_itself(seed, index):
  """A region drawn on a non-square canvas with an off-centre head survives the round trip."""
  piece = phantom.phantom_slice(seed, index, positive=False)
  image = piece.image
  if image.ndim == 3:
    image = image[..., 0]
  h, w = image.shape
  # Move the head off-centre on a wider canvas, so the crop is far from trivial.
  canvas = np.zeros((h + 40, w + 130), np.uint8)
  canvas[10:10 + h, 110:110 + w] = image
  _, info = preprocess.preprocess(canvas)
  assert info.orig_shape == canvas.shape and canvas.shape[0] != canvas.shape[1]
  yy, xx = np.mgrid[0:canvas.shape[0], 0:canvas.shape[1]]
  cy, cx = (info.top + info.bottom) / 2 + 7, (info.left + info.right) / 2 - 11
  region = ((yy - cy) / 30) ** 2 + ((xx - cx) / 22) ** 2 < 1
  small = preprocess.apply_crop(region.astype(np.uint8), info, size=128)
  assert small.dtype == np.uint8 and small.shape == (128, 128)
  back = preprocess.to_original_grid(small.astype(np.float32), info) >= 0.5
  assert back.shape == canvas.shape
  assert _dice(back, region) > 0.9
  assert not back[:, :info.left].any() and not back[:info.top].any()  # 0 outside the crop


def test_inverse_is_zero_outside_the_crop():
  image = _disk_image(200, 120, 100, 60, 40)
  _, info = preprocess.preprocess(image)
  ones = preprocess.to_original_grid(np.ones((64, 64), np.float32), info)
  inside = np.zeros(image.shape, bool)
  inside[info.top:info.bottom, info.left:info.right] = True
  np.testing.assert_allclose(ones[inside], 1.0, atol=1e-5)
  assert ones[~inside].max() == 0.0
  with pytest.raises(ValueError, match=r'array shape \(10, 10\) does not match the original'):
    preprocess.apply_crop(np.zeros((10, 10)), info)


def test_input_array_is_not_modified():
  image = _disk_image(80, 100, 40, 50, 25, background=0.1)
  before = image.copy()
  preprocess.preprocess(image)
  np.testing.assert_array_equal(image, before)


def test_a_white_frame_along_the_border_does_not_set_the_background():
  # (some files have one) The border ring is then all frame: the background level is the
  # image's 5th percentile instead, and the head is found.
  image = _disk_image(200, 200, 100, 100, 60, background=0.1, value=0.7)
  image[:6] = image[-6:] = 1.0
  image[:, :6] = image[:, -6:] = 1.0
  head = preprocess.find_head(image)
  (top, left, bottom, right), background = head.box, head.background
  assert abs(background - 0.1) < 0.02
  assert abs(top - 40) <= 4 and abs(bottom - 160) <= 4
  assert abs(left - 40) <= 4 and abs(right - 160) <= 4


def test_a_thin_scalp_ring_around_the_brain_is_inside_the_head_box():
  # A scalp ring separated from the brain by the dark skull, too small (18% of the brain's
  # area, smoothed) to be kept for its size and too far out to count as near the brain's box:
  # it is kept because it surrounds the box's centre.
  yy, xx = np.mgrid[0:180, 0:180]
  r = np.hypot(yy - 90, xx - 90)
  image = np.where((r < 65) | ((r >= 84) & (r < 86)), 0.7, 0.0).astype(np.float32)
  _, info = preprocess.preprocess(image)
  assert abs(info.top - 4) <= 3 and abs(info.bottom - 176) <= 3  # (the brain's: 25 to 155)
  assert abs(info.left - 4) <= 3 and abs(info.right - 176) <= 3


@pytest.mark.parametrize('grey', [0.05, 0.1, 0.3])
def test_a_head_on_a_grey_field_of_view_inside_black_bars_is_cropped_to_the_head(grey):
  # (55 healthy Br35H slices, no tumour slice: their heads sat in a grey rectangle, the
  # field of view, between black bars, and that rectangle was the crop) The grey is then the
  # background: the crop hugs the head and the grey becomes 0, as around any other head.
  rng = np.random.default_rng(0)
  image = np.zeros((240, 260), np.float32)  # a black frame around the field
  image[16:224, 30:230] = grey
  image += _disk_image(240, 260, 120, 130, 80, value=0.8 - grey)
  image += rng.normal(0, 0.005, image.shape).astype(np.float32)
  image = np.clip(image, 0, 1)
  head = preprocess.find_head(image)
  (top, left, bottom, right), background = head.box, head.background
  assert abs(top - 40) <= 3 and abs(bottom - 200) <= 3, (top, bottom)
  assert abs(left - 50) <= 3 and abs(right - 210) <= 3, (left, right)
  assert abs(background - grey) < 0.02
  out, _ = preprocess.preprocess(image)
  assert out[6:14, 6:14].max() < 0.05  # (the corner of the box, outside the head)
  # Bars left and right only, the field running off the top and bottom (Br35H's no534.jpg):
  # cropped to the head across, the rows above and below kept (a side on the image's edge
  # stays where the first box put it), their grey at 0 all the same.
  image[:16] = image[16]
  image[224:] = image[223]
  head = preprocess.find_head(image)
  (top, left, bottom, right), background = head.box, head.background
  assert (top, bottom) == (0, 240) and abs(left - 50) <= 3 and abs(right - 210) <= 3
  assert abs(background - grey) < 0.02
  assert preprocess.preprocess(image)[0][:20].max() < 0.05


def test_a_head_running_off_the_image_in_darker_tissue_is_not_cut():
  # A squarish head off the left, right and bottom edges, its lower part darker tissue: the
  # second look took that tissue for a grey field (its level the "background" found inside)
  # and left out a fifth of the head.
  yy, xx = np.mgrid[:240, :260]
  d = np.abs((yy - 140) / 130) ** 4 + np.abs((xx - 130) / 140) ** 4
  image = np.zeros((240, 260), np.float32)
  image[d <= 1] = 0.8
  image[d <= 0.8] = 0.45
  image[(d <= 1) & (yy > 192)] = 0.25
  image += np.random.default_rng(1).normal(0, 0.005, image.shape).astype(np.float32)
  image = np.clip(image, 0, 1)
  assert preprocess._find_head_once(image)[1]  # (looked at again)
  assert preprocess.find_head(image)[0][2] == 240


def test_a_faint_scalp_rim_on_a_grey_field_is_kept(br35h_dir):
  # A Br35H T2 slice cut 30% at its bottom and right, shown on a grey field (0.1 + 0.9 x) in a
  # black frame, turned: the second look's box left out the faint scalp arc on one side (under
  # 1% of that band was brighter than the grey by 0.24 of the contrast).
  from brainjax.data import image_io  # pylint: disable=import-outside-toplevel
  x = image_io.to_gray_float(image_io.read_image_file(str(br35h_dir / 'no' / 'no530.jpg')))
  top, left, bottom, right = preprocess.find_head(x)[0]
  x = x[:bottom - int(0.3 * (bottom - top)), :right - int(0.3 * (right - left))]
  x = np.ascontiguousarray(np.rot90(np.pad(0.1 + 0.9 * x, 5)), np.float32)
  assert preprocess.find_head(x)[0][1] <= 8  # (the rim's side; the cut crop's box starts at 6)


def test_a_head_reaching_the_edge_of_its_grey_field_keeps_its_edge_rows():
  # The second search looks inside the field less a few edge pixels; a head running off the
  # field's bottom lost those rows (scalp).
  image = np.zeros((630, 630), np.float32)
  image[20:600, 63:567] = 0.3  # the grey field in a black frame
  yy, xx = np.mgrid[:630, :630]
  image[((yy - 399) ** 2 + (xx - 315) ** 2 <= 252 ** 2) & (yy < 600)] = 0.8  # cut by its bottom
  top, left, bottom, right = preprocess.find_head(image)[0]
  assert 600 <= bottom <= 606 and 139 <= top <= 147, (top, bottom)
  assert abs(left - 63) <= 5 and abs(right - 567) <= 5, (left, right)


def test_a_head_cut_by_the_image_edges_is_not_cut_further():
  # A zoomed scan: the head runs off the top, left and right, on a grey background, a black
  # strip below. Its box's edges are tissue, so the head is looked for again inside it; that
  # search's brighter "background" found the upper brain alone (rows 8 to 81 of a head down to
  # row 190), which left out the skull and brain below it.
  yy, xx = np.mgrid[0:200, 0:180]
  d = np.hypot(yy - 80, xx - 90)
  image = np.full((200, 180), 0.1, np.float32)
  image[d < 110] = 0.9  # scalp and skull
  image[d < 102] = 0.35  # brain, brighter in its upper part
  image[(d < 90) & (yy < 80)] = 0.6
  image = np.pad(image, ((0, 16), (0, 0)))
  assert preprocess._find_head_once(image)[1]  # (looked at again)
  top, left, bottom, right = preprocess.find_head(image)[0]
  assert (top, left, right) == (0, 0, 180) and 188 <= bottom <= 202, bottom


def test_anything_darker_than_the_background_becomes_0_before_resizing():
  # A region below the file's grey background level maps to 0 however dark it is: the output
  # is the same for a patch at 0.0 and at 0.15 (under a background of 0.3), its edges included.
  outs = []
  for dark in (0.0, 0.15):
    image = _disk_image(256, 256, 128, 128, 90, background=0.3, value=0.8)
    image[101:141, 103:143] = dark  # (2.4% of the image: the 5th percentile stays 0.3)
    assert abs(preprocess.find_head(image)[1] - 0.3) < 1e-3
    outs.append(preprocess.preprocess(image)[0])
  assert outs[0][64, 64] == 0.0
  np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize('margin', [1.0, -0.1])
def test_a_margin_outside_0_to_1_is_refused(margin):
  with pytest.raises(ValueError, match='margin must be in'):
    preprocess.crop_info((100, 100), (10, 10, 90, 90), margin)


def _disk(img, cy, cx, r, v):
  yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
  img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = v


def test_a_head_split_in_two_by_a_dark_gap_is_kept_whole():
  # Parts at least _KEEP_FRACTION of the largest one's size are head.
  img = np.zeros((192, 192), np.float32)
  _disk(img, 96, 60, 40, 0.8)
  _disk(img, 96, 150, 25, 0.8)  # 39% of the larger part: kept (>= 20%)
  top, left, bottom, right = preprocess.find_head(img).box
  assert left <= 21 and right >= 175


def test_a_ring_fragment_near_the_brain_is_inside_the_box_and_kept():
  # Small parts near the box and the brain's outline (scalp-ring fragments) are head.
  img = np.zeros((192, 192), np.float32)
  _disk(img, 96, 96, 50, 0.8)
  img[36:42, 88:104] = 0.8  # 4 px above the brain, 1.2% of its area
  top = preprocess.find_head(img).box[0]
  assert top <= 36
  out, _ = preprocess.preprocess(img, margin=0.0)
  assert out[1:7, 54:70].min() > 0.5  # (the fragment's rows, not masked)


def _head_with_a_letter(rows, cols):
  img = np.zeros((200, 200), np.float32)
  _disk(img, 100, 100, 60, 0.8)  # the head's box: 40 to 160 both ways
  img[rows, cols] = 1.0  # a burnt-in letter, thick enough to outlast the 3x3 opening
  return img


def test_a_letter_in_a_corner_of_the_head_box_becomes_background():
  # (Br35H's corner letters, rulers and frame lines, more often in tumour files) The box
  # holds the letter, 10 px off the head; the pixels outside the head's outline become 0.
  img = _head_with_a_letter(slice(41, 49), slice(41, 52))
  out, info = preprocess.preprocess(img, margin=0.0)
  assert all(abs(a - b) <= 3 for a, b in zip(
      (info.top, info.left, info.bottom, info.right), (40, 40, 160, 160)))
  assert out[:10, :12].max() == 0.0  # (the letter's corner of the output)
  assert out[60:68, 3:6].min() > 0.5 and out[3:6, 60:68].min() > 0.5  # (the head's edges)


def test_a_letter_beside_the_head_does_not_widen_its_box():
  # Within _NEAR of the box but far from the head's outline: no part of the head.
  img = _head_with_a_letter(slice(30, 38), slice(30, 45))
  top, left, bottom, right = preprocess.find_head(img).box
  assert abs(top - 40) <= 3 and abs(left - 40) <= 3, (top, left)


def _border_lines(image) -> np.ndarray:
  """bool: the bright pixels of the rows and columns in an image's outer 2% that are bright
  along 75% of their length (a frame drawn along the file's edge)."""
  h, w = image.shape
  band, bright = max(2, round(0.02 * min(h, w))), image > 0.5
  lines = np.zeros(image.shape, bool)
  for i in [*range(band), *range(h - band, h)]:
    if bright[i].mean() >= 0.75:
      lines[i] = bright[i]
  for j in [*range(band), *range(w - band, w)]:
    if bright[:, j].mean() >= 0.75:
      lines[:, j] |= bright[:, j]
  return lines


def _frame_kept(image) -> int:
  """Pixels of a slice's output above 0.3 on its file's border lines (_border_lines)."""
  out, info = preprocess.preprocess(image)
  return int((out[preprocess.apply_crop(_border_lines(image).astype(np.uint8), info) > 0]
              > 0.3).sum())


def test_a_frame_line_the_head_touches_becomes_background():
  # (Br35H: a frame along the file's edge, the head touching it on four sides) Where the head
  # touches it the line lies within the head's outline; it is followed through the contact.
  img = np.full((200, 200), 0.05, np.float32)
  _disk(img, 100, 100, 99, 0.6)
  img[:2] = img[-2:] = 1.0
  img[:, :2] = img[:, -2:] = 1.0
  assert _border_lines(img).sum() > 1500
  assert _frame_kept(img) == 0
  out, _ = preprocess.preprocess(img)
  assert abs(np.median(out[32:96, 32:96]) - 1.0) < 0.05  # (the head as it was)
  assert out[64, 10:20].min() > 0.9 and out[10:20, 64].min() > 0.9  # (its rim, but for a few rows)


@pytest.mark.parametrize('name', ['yes/y784.jpg', 'yes/y1077.jpg', 'yes/y285.jpg',
                                  'no/no1033.jpg'])
def test_br35h_frame_lines_the_head_touches_become_background(br35h_dir, name):
  # Each kept bars of its frame beside the head before PREPROCESS_VERSION 11.
  from brainjax.data import image_io  # pylint: disable=import-outside-toplevel
  assert _frame_kept(image_io.to_gray_float(image_io.read_image_file(str(br35h_dir / name)))) < 5


@pytest.mark.slow
def test_br35h_slices_that_keep_their_frame_are_few_in_both_classes(br35h_dir):
  # (As measured on the 3000 files: 116 tumour and 21 healthy slices kept 5 output pixels or
  # more of a frame along the file's edge before PREPROCESS_VERSION 11, 13 and 0 after it.)
  from brainjax.data import image_io  # pylint: disable=import-outside-toplevel
  kept = {}
  for folder in ('yes', 'no'):
    kept[folder] = [f.name for f in sorted((br35h_dir / folder).iterdir()) if _frame_kept(
        image_io.to_gray_float(image_io.read_image_file(str(f)))) >= 5]
  print(f'Br35H slices keeping their frame along the file\'s edge: '
        f'{ {k: len(v) for k, v in kept.items()} }; tumour: {kept["yes"]}')
  assert len(kept['yes']) < 30 and len(kept['no']) < 30


def test_outline_mask_is_the_pixels_whose_centres_lie_in_the_polygon():
  rng = np.random.default_rng(0)
  for _ in range(20):
    points = rng.uniform(0, 40, (12, 2))
    hull = spatial.ConvexHull(points)
    polygon = points[hull.vertices]  # (counter-clockwise)
    box = (-2, 3, 43, 38)
    rows, cols = np.mgrid[box[0]:box[2], box[1]:box[3]] + 0.5
    inside = np.ones(rows.shape, bool)
    for p, q in zip(polygon, np.roll(polygon, -1, axis=0)):  # left of every edge (or on it)
      inside &= (q[0] - p[0]) * (cols - p[1]) - (q[1] - p[1]) * (rows - p[0]) >= -1e-9
    mask = preprocess.outline_mask(polygon, box)
    assert mask.shape == rows.shape
    np.testing.assert_array_equal(mask, inside)


def _bright_beside_the_head(out) -> int:
  """Pixels of a preprocessed slice above 0.3 outside its largest region (smoothed > 0.05),
  holes filled and grown by 3 px: burnt-in marks that preprocessing left beside the head."""
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  labels, _ = ndimage.label(ndimage.gaussian_filter(out, 1.0) > 0.05)
  head = labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])
  region = ndimage.binary_dilation(ndimage.binary_fill_holes(head), iterations=3)
  return int(((out > 0.3) & ~region).sum())


@pytest.mark.parametrize('name', ['no/no126.jpg', 'no/no1211.jpg', 'yes/y1092.jpg',
                                  'yes/y510.jpg'])
def test_br35h_annotations_beside_the_head_become_background(br35h_dir, name):
  # A frame, letters, a watermark, scanner text: each was in the crop before
  # PREPROCESS_VERSION 10.
  from brainjax.data import image_io  # pylint: disable=import-outside-toplevel
  out, _ = preprocess.preprocess(image_io.read_image_file(str(br35h_dir / name)))
  assert _bright_beside_the_head(out) == 0


@pytest.mark.slow
def test_br35h_slices_with_marks_beside_the_head_are_few_in_both_classes(br35h_dir):
  # (As measured on the 3000 files: 252 tumour and 78 healthy slices before PREPROCESS_VERSION
  # 10, a cue a classifier could learn; 13 and 8 after it; 19 and 8 after 11, which cut six
  # frame bars short, leaving a piece of each apart from the head.)
  from brainjax.data import image_io  # pylint: disable=import-outside-toplevel
  marked = {}
  for folder in ('yes', 'no'):
    files = sorted((br35h_dir / folder).iterdir())
    counts = [_bright_beside_the_head(preprocess.preprocess(image_io.read_image_file(str(f)))[0])
              for f in files]
    marked[folder] = sum(c > 0 for c in counts)
  print(f'Br35H slices with bright pixels beside the head: {marked}')
  assert marked['yes'] < 30 and marked['no'] < 30


def test_the_output_is_an_antialiased_resize_of_the_canvas():
  # 1-px stripes downscaled 4x average to grey; nearest neighbour keeps 0 or 1.
  img = np.zeros((512, 512), np.float32)
  _disk(img, 256, 256, 200, 1.0)
  img[::2] *= 0.5
  out, _ = preprocess.preprocess(img, size=128, margin=0.0)
  centre = out[48:80, 48:80]
  assert centre.std() < 0.05
