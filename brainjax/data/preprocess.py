"""Study section 5.1: crop the head, centre it in a square, resize, scale to [0, 1].

Bounding box (robust to a grey/noisy background, frames and burnt-in text):
  1. Work on a copy whose longer side is at most 192 px (box-filtered), lightly
     smoothed (Gaussian, sigma 1 px) so that noise does not pass the threshold.
  2. Background level = median of the outer 2% ring of the image, or the 5th
     percentile of the image if lower (some files have a white frame along the
     border); noise = MAD of the high-pass residual of background pixels.
     Foreground = pixels above background + max(6% of the contrast up to
     the 99.5th percentile, 3 noise sigmas).
  3. Straight frame lines (longer than 75% of the image one way, thin the
     other) are removed from the foreground (from the pixels only outside the
     head's outline, below); a frame line along the image's edge (its outer 3%)
     that the head touches is removed whole, the stretch it shares with the
     head included (a few rows of the head's rim go with it), and from the
     output too, since inside the outline it would stay. Then a 3x3 binary
     opening removes specks and text strokes; then connected components: the
     largest one (the head) plus any component at least 20% of its size (a head
     split in two by a dark gap), plus smaller ones (>= 0.1% of the image) that
     surround the centre of that box (a scalp ring separated from the brain by
     the dark skull) or lie within 12% of it and come within 5% of its shorter
     side of their convex outline (ring fragments). Text and markers farther
     out, such as in the box's corners, are ignored. A largest component under
     10% of the image and thinner than 8% of its shorter side is no head (text
     or lines only).
  4. The box of those components, mapped back to full resolution, and their
     outline: the convex hull of them grown by 2 px of the working copy.
  5. A box whose edges lie mostly above the threshold may be a grey field of view between
     black bars: steps 1-4 again inside it (less a few edge pixels), kept if their background
     is a level above the first and what they leave out is that grey (find_head).

Intensity: (x - background) / (99.5th percentile inside the head - background),
clipped to [0, 1]: the background becomes 0 whatever its level in the file
(the shared background of the study), and a few saturated pixels or bright
text do not set the scale. Pixels of the box outside the head's outline become 0
too, and so do the frame lines along the image's edge: letters, rulers, frame lines and
text beside the head are gone (what lies over the head or touches it, other than such a
frame line, stays).

Geometry: the crop (h, w) is pasted centred into a zero square of side
max(h, w) * (1 + 2 * margin) (the margin is a fraction of the longer side on
each side), which is resized to size x size (PIL, antialiased bilinear).
`CropInfo` records everything needed to apply the same transform to a mask
(`apply_crop`) or to map a (size, size) map back (`to_original_grid`).
"""
import dataclasses
from typing import NamedTuple, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy import spatial

from brainjax.data import image_io

_WORK_SIDE = 192           # longer side of the copy the box is searched on
_BORDER_FRACTION = 0.02    # width of the ring that estimates the background
_CONTRAST_FRACTION = 0.06  # threshold, as a fraction of the contrast
_NOISE_SIGMAS = 3.0
_KEEP_FRACTION = 0.20      # components kept, relative to the largest
# Smaller ones at least _NEAR_AREA of the image are head where they lie within _NEAR of the
# box (of its sides) and come within _NEAR_OUTLINE of its shorter side of the head's convex
# outline: scalp-ring fragments beyond the dark skull (most 0.01 to 0.04 in Br35H); burnt-in
# letters, rulers and markers lie farther out (most 0.1 or more). A trade-off: three healthy
# Br35H slices lose a scalp arc at 0.052-0.057 (no828.jpg, its copy no1302.jpg, no372.jpg);
# 5% of the longer side would keep them but let rulers and markers back into the boxes of
# nine others or more.
_NEAR = 0.12
_NEAR_OUTLINE = 0.05
_NEAR_AREA = 0.001
_HIGH_PERCENTILE = 99.5
_LOW_PERCENTILE = 5.0
_MIN_CONTRAST = 2.0 / 255  # below this the slice is blank
# A head's box found inside a grey field of view is kept if each band it leaves out has its
# median within _CONTRAST_FRACTION of the contrast of the grey and at most this fraction of it
# brighter than the grey by _ABOVE_GREY of the contrast (a scalp rim, tissue).
_ABOVE_GREY = 0.15
_MAX_BRIGHT_LEFT_OUT = 0.01
_MIN_SNR = 6.0             # contrast below this many noise sigmas: pure noise
_MIN_FOREGROUND = 0.005    # head area below this fraction of the image: near-blank
# A largest region under _THIN_CHECK_AREA of the image whose thickest part is under
# _MIN_THICKNESS of its shorter side is no head (burnt-in text, lines). Br35H's heads: area
# 0.27 and thickness 0.21 at least, the phantom's 0.22 and 0.32; eight lines of text filling
# a 256 px image: 0.025 and 0.05.
_THIN_CHECK_AREA = 0.10
_MIN_THICKNESS = 0.08
# Shorter side of the working copy below which no head is looked for: the noise estimate
# needs the smoothed image, and smoothing would merge so few pixels with their background.
# (16 px: a 16 x 16 image, or a 1:12 strip; Br35H's smallest is 150 px a side.)
_MIN_WORK_SIDE = 16
# Working-copy pixels the head's outline is grown by before its convex hull is taken: the
# faint rim below the threshold (the smoothing already widens the head by about one).
_OUTLINE_MARGIN = 2
# Frame lines in this outer fraction of the working copy's rows (columns) are followed through
# the head where it touches them (Br35H: in 116 tumour and 21 healthy slices such a line had
# stayed within the head's outline, bars beside the head in the output). Their pieces clear of
# the head must span _FRAME_SPAN of the side and cover _FRAME_COVER of it: the thin ends of a
# head's own rows (a head filling the image) cover a few pixels. (8% would also take lines drawn
# a little inside the edge, in 19 more tumour and 13 more healthy slices, but it cut the rim
# of a head running off the image's edge: test_a_faint_scalp_rim_on_a_grey_field_is_kept.)
_FRAME_BAND = 0.03
_FRAME_SPAN = 0.75
_FRAME_COVER = 0.2


class Head(NamedTuple):
  """Where find_head found the head.

  box: (top, left, bottom, right), rows [top, bottom) and columns [left, right).
  background, scale: the intensity mapping, (x - background) / scale.
  outline: float64 (K, 2) (row, col) vertices of a convex polygon around the head, in
    pixel-edge coordinates of the original image (pixel (i, j) spans [i, i+1) x [j, j+1)).
  frame: bool, the frame lines along the image's edge on the working copy's grid (its shape
    and the image's give the scale; frame_mask maps it onto the image).
  """
  box: Tuple[int, int, int, int]
  background: float
  scale: float
  outline: np.ndarray
  frame: np.ndarray


class BlankImage(ValueError):
  """The slice holds no head (blank, near-blank, pure noise, too small or too narrow)."""


@dataclasses.dataclass(frozen=True)
class CropInfo:
  """How one original image was mapped onto the size x size output.

  The crop is rows [top, bottom) and columns [left, right) of the original
  (orig_height, orig_width) image. It sits at (pad_top, pad_left) in a zero
  square of side `side` (original pixel units), which is resized to the output.
  """
  orig_height: int
  orig_width: int
  top: int
  left: int
  bottom: int
  right: int
  side: int
  pad_top: int
  pad_left: int

  @property
  def orig_shape(self) -> Tuple[int, int]:
    return (self.orig_height, self.orig_width)


def _resize(array: np.ndarray, height: int, width: int, order: int) -> np.ndarray:
  """float32 2-D resize; order 0 nearest, 1 antialiased bilinear."""
  resample = {0: Image.Resampling.NEAREST, 1: Image.Resampling.BILINEAR}[order]
  if array.shape == (height, width):
    return array.astype(np.float32, copy=True)
  image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode='F')
  return np.array(image.resize((width, height), resample), dtype=np.float32)


def _work_copy(x: np.ndarray) -> Tuple[np.ndarray, float, float]:
  """A copy with longer side <= _WORK_SIDE and its row/col scale factors."""
  h, w = x.shape
  factor = max(h, w) / _WORK_SIDE
  if factor <= 1.0:
    return x, 1.0, 1.0
  wh, ww = max(1, round(h / factor)), max(1, round(w / factor))
  image = Image.fromarray(x, mode='F').resize((ww, wh), Image.Resampling.BOX)
  return np.array(image, dtype=np.float32), h / wh, w / ww


def _opening_1d(mask: np.ndarray, length: int, axis: int) -> np.ndarray:
  return ndimage.maximum_filter1d(ndimage.minimum_filter1d(mask, length, axis), length, axis)


def _lines(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """bool (lines, frame) of a uint8 foreground mask.

  lines: straight runs longer than 75% of the side in one direction and thinner than 10% of
  the other side. Solid regions such as the head have long runs both ways, and the flattest
  arc of a scalp ring is far shorter than 75% of the image, so both are kept.
  frame: each row (column) in the image's outer _FRAME_BAND whose line pieces span and cover
  enough of it (_FRAME_SPAN, _FRAME_COVER), from its first piece to its last: a frame line,
  the stretch where the head touches it included (there it is no thin run).
  """
  h, w = mask.shape
  horizontal = _opening_1d(mask, int(0.75 * w), 1) > _opening_1d(mask, max(3, int(0.1 * h)), 0)
  vertical = _opening_1d(mask, int(0.75 * h), 0) > _opening_1d(mask, max(3, int(0.1 * w)), 1)
  frame = np.zeros(mask.shape, bool)
  for pieces, out in ((horizontal, frame), (vertical.T, frame.T)):  # (frame.T is a view)
    n, length = pieces.shape
    band = max(2, round(_FRAME_BAND * n))
    for r in [*range(band), *range(n - band, n)]:
      cols = np.flatnonzero(pieces[r])
      if cols.size >= _FRAME_COVER * length and cols[-1] + 1 - cols[0] >= _FRAME_SPAN * length:
        out[r, cols[0]:cols[-1] + 1] = True
  return horizontal | vertical, frame


def frame_mask(head: Head, shape) -> np.ndarray:
  """bool (bottom - top, right - left): the pixels of head.box, in an image of `shape`, on
  the frame lines of Head.frame (grown by one working-copy pixel: a line the working copy's
  box filter spread over two)."""
  top, left, bottom, right = head.box
  frame = ndimage.binary_dilation(head.frame) if head.frame.any() else head.frame
  (h, w), (wh, ww) = shape, frame.shape
  rows = np.minimum(np.arange(top, bottom) * wh // h, wh - 1)
  cols = np.minimum(np.arange(left, right) * ww // w, ww - 1)
  return frame[np.ix_(rows, cols)]


def _union_box(slices, keep):
  """(row0, col0, row1, col1) covering the kept components' slices."""
  chosen = [sl for sl, k in zip(slices, keep) if k]
  return (min(sl[0].start for sl in chosen), min(sl[1].start for sl in chosen),
          max(sl[0].stop for sl in chosen), max(sl[1].stop for sl in chosen))


def find_head(x: np.ndarray) -> Head:
  """float (H, W) in [0, 1] -> Head (box, background, scale, outline).

  A box whose edges lie mostly above the threshold may be the scan's field of view on a grey
  background, inside the file's black bars or frame (55 of Br35H's 3000 slices, all healthy: a
  grey rectangle around their heads): the head is looked for again inside it, and that box is
  kept where the grey is a level above the first background and each band it leaves out is
  that grey, not tissue (a head running off the image has box edges of tissue too: its inner
  "background", brighter, would cut it); its sides on the image's edges stay. Its outline
  stays the grey field's (which holds the whole box: nothing in it is masked), since a side
  kept from the first box lies outside the outline found inside.
  Raises BlankImage when no head is found.
  """
  first, on_plateau = _find_head_once(x)
  top, left, bottom, right = box = first.box
  if not on_plateau or (bottom - top, right - left) == x.shape:
    return first
  # Looked at inside the box less its edges, which the smoothing and the working copy's
  # coarser grid widen by a few pixels of the bars (they would lower the grey's estimate).
  edge = int(np.ceil(2 * max(1.0, max(x.shape) / _WORK_SIDE))) + 1
  area = x[top + edge:bottom - edge, left + edge:right - edge]
  try:
    (t, l, b, r), inner_background, inner_scale, _, _ = find_head(area)
  except BlankImage:  # (nothing inside it, or too small: the grey field is what there is)
    return first
  if inner_background - first.background <= 0.5 * _CONTRAST_FRACTION * first.scale:
    return first
  # A side on the area's edge is the first box's (the head reaches the field's edge there),
  # and so is one on the image's edge (no bars beyond: what lies there may be a head running
  # off the image, in tissue as dark as the grey found inside).
  h, w = x.shape
  inner = (top if t == 0 or top == 0 else top + edge + t,
           left if l == 0 or left == 0 else left + edge + l,
           bottom if b == area.shape[0] or bottom == h else top + edge + b,
           right if r == area.shape[1] or right == w else left + edge + r)
  if inner == box:  # (a head filling the field: the first background stands)
    return first
  # Each band it leaves out must be the grey field, at the grey's level with hardly anything
  # brighter: a head cut by the image's edges lost its rim, or its lower part, to a brighter
  # "background" found inside it.
  crop = x[top:bottom, left:right]
  it, il, ib, ir = (inner[0] - top, inner[1] - left, inner[2] - top, inner[3] - left)
  for band in (crop[:it], crop[ib:], crop[it:ib, :il], crop[it:ib, ir:]):
    if band.size and (
        abs(np.median(band) - inner_background) > _CONTRAST_FRACTION * inner_scale
        or np.mean(band > inner_background + _ABOVE_GREY * inner_scale) > _MAX_BRIGHT_LEFT_OUT):
      return first
  return Head(inner, inner_background, inner_scale, first.outline, first.frame)


def _ring(pixels: np.ndarray, width: int) -> np.ndarray:
  """The pixels of the outer ring `width` wide of a 2-D array, flat."""
  return np.concatenate([pixels[:width].ravel(), pixels[-width:].ravel(),
                         pixels[width:-width, :width].ravel(),
                         pixels[width:-width, -width:].ravel()])


def _convex_hull(mask: np.ndarray) -> np.ndarray:
  """float64 (K, 2) (row, col) vertices, in pixel-edge coordinates, of the convex hull of a
  non-empty 2-D mask: of the outer corners of each row's first and last pixel."""
  rows = np.flatnonzero(mask.any(axis=1))
  first = np.argmax(mask[rows], axis=1)
  last = mask.shape[1] - np.argmax(mask[rows, ::-1], axis=1)  # (its right edge)
  corners = np.concatenate([np.stack([rows + dr, col], axis=1)
                            for dr in (0, 1) for col in (first, last)]).astype(np.float64)
  return corners[spatial.ConvexHull(corners).vertices]


def outline_mask(outline: np.ndarray, box) -> np.ndarray:
  """bool (bottom - top, right - left): the pixels of `box` whose centres lie inside the
  convex polygon `outline` (Head.outline)."""
  top, left, bottom, right = box
  p = np.asarray(outline, np.float64)
  q = np.roll(p, -1, axis=0)  # the polygon's edges run p -> q
  sloped = p[:, 0] != q[:, 0]  # (a level edge's ends are on its neighbours)
  p, q = p[sloped], q[sloped]
  # Convex: each row's inside is one interval, between the edges its centre line crosses.
  y = np.arange(top, bottom, dtype=np.float64)[:, None] + 0.5
  t = (y - p[:, 0]) / (q[:, 0] - p[:, 0])
  x = p[:, 1] + t * (q[:, 1] - p[:, 1])
  crosses = (t >= 0) & (t <= 1)
  first = np.where(crosses, x, np.inf).min(axis=1, initial=np.inf)
  last = np.where(crosses, x, -np.inf).max(axis=1, initial=-np.inf)
  cols = np.arange(left, right, dtype=np.float64) + 0.5
  return (cols >= first[:, None]) & (cols <= last[:, None])


def _head_components(labels: np.ndarray, sizes: np.ndarray, slices) -> np.ndarray:
  """bool (count,): which of the labelled components are the head (step 3 of the module's
  docstring): the largest, those of at least _KEEP_FRACTION of its size, rings around the
  centre of their box, and smaller parts near both their box and their convex outline."""
  keep = sizes >= _KEEP_FRACTION * sizes.max()
  candidates = np.flatnonzero(~keep & (sizes >= _NEAR_AREA * labels.size))
  for _ in range(2):  # a ring found in the first pass can bring its fragments
    kept = np.count_nonzero(keep)
    r0, c0, r1, c1 = _union_box(slices, keep)
    mid_r, mid_c = (r0 + r1) / 2, (c0 + c1) / 2
    for i in candidates:
      sl = slices[i]
      keep[i] |= sl[0].start <= mid_r < sl[0].stop and sl[1].start <= mid_c < sl[1].stop
    pad_r, pad_c = _NEAR * (r1 - r0), _NEAR * (c1 - c0)
    in_box = [i for i in candidates if slices[i][0].start >= r0 - pad_r
              and slices[i][0].stop <= r1 + pad_r and slices[i][1].start >= c0 - pad_c
              and slices[i][1].stop <= c1 + pad_c]
    if in_box:
      hull = outline_mask(_convex_hull(np.concatenate([[False], keep])[labels]),
                          (0, 0) + labels.shape)
      close = ndimage.distance_transform_edt(~hull) <= _NEAR_OUTLINE * min(r1 - r0, c1 - c0)
      touches = np.bincount(labels[close], minlength=len(sizes) + 1)[1:] > 0
      keep[in_box] |= touches[in_box]
    if np.count_nonzero(keep) == kept:  # (nothing new: the second pass would find the same)
      break
  return keep


def _find_head_once(x: np.ndarray) -> Tuple[Head, bool]:
  """find_head's Head, and whether the box's edges lie mostly above the threshold (a head's
  box meets the head at a few points; its corners are background)."""
  h, w = x.shape
  work, fy, fx = _work_copy(x)
  wh, ww = work.shape
  if min(wh, ww) < _MIN_WORK_SIDE:
    raise BlankImage(f'no head: a {h} x {w} px image is too small or too narrow to hold one')
  smooth = ndimage.gaussian_filter(work, 1.0, truncate=2.0)
  ring = max(1, round(_BORDER_FRACTION * min(wh, ww)))  # (a few px: the sides are >= 16)
  border = _ring(smooth, ring)
  # The low percentile guards against bright frames drawn along the border.
  low, high = np.percentile(smooth, [_LOW_PERCENTILE, _HIGH_PERCENTILE])
  background = min(float(np.median(border)), float(low))
  contrast = float(high) - background
  if contrast < _MIN_CONTRAST:
    raise BlankImage(f'blank image (contrast {contrast:.4f} above the background level '
                     f'{background:.3f})')
  # Noise of the smoothed image, from the high-pass residual of background
  # pixels (insensitive to the ramps of frames and edges); a Gaussian of sigma
  # 1 px divides white noise by about 3.5.
  quiet = smooth <= background + _CONTRAST_FRACTION * contrast
  residual = (work - smooth)[quiet]
  noise = 1.4826 * float(np.median(np.abs(residual))) / 3.5 if residual.size else 0.0
  if contrast < _MIN_SNR * noise:
    raise BlankImage(f'near-blank image (contrast {contrast:.4f} is within the noise, '
                     f'sigma {noise:.4f})')
  # (_NOISE_SIGMAS * noise is at most half the contrast, by the _MIN_SNR check above.)
  threshold = background + max(_CONTRAST_FRACTION * contrast, _NOISE_SIGMAS * noise)
  foreground = (smooth > threshold).view(np.uint8)
  frame = np.zeros(work.shape, bool)
  if min(wh, ww) >= 24:
    lines, frame = _lines(foreground)
    foreground = foreground & ~(lines | frame).view(np.uint8)
    # A 3x3 opening (separable min then max filter: fast on uint8) removes
    # specks and text strokes but not a thin scalp ring.
    opened = ndimage.maximum_filter(ndimage.minimum_filter(foreground, 3), 3)
    if opened.any():
      foreground = opened
  labels, count = ndimage.label(foreground)
  if count == 0:
    raise BlankImage('near-blank image (nothing above the background level)')
  sizes = np.bincount(labels.ravel())[1:]
  slices = ndimage.find_objects(labels)
  largest = int(np.argmax(sizes))
  if sizes[largest] < _THIN_CHECK_AREA * wh * ww:  # (a head's region is larger: not checked)
    thickness = 2 * ndimage.distance_transform_edt(  # (padded: the box's edge is background)
        np.pad(labels[slices[largest]] == largest + 1, 1)).max()
    if thickness < _MIN_THICKNESS * min(wh, ww):
      raise BlankImage(f'no head: its largest region is {thickness:.0f} px thick at most, '
                       f'{100 * thickness / min(wh, ww):.1f}% of the image (text or lines?)')
  keep = _head_components(labels, sizes, slices)
  area = float(sizes[keep].sum()) / (wh * ww)
  if area < _MIN_FOREGROUND:
    raise BlankImage(f'near-blank image (head area {100 * area:.2f}% of the image)')
  r0, c0, r1, c1 = _union_box(slices, keep)
  # No extra padding: the smoothing already widens the mask by about a pixel.
  top, bottom = max(0, int(np.floor(r0 * fy))), min(h, int(np.ceil(r1 * fy)))
  left, right = max(0, int(np.floor(c0 * fx))), min(w, int(np.ceil(c1 * fx)))
  head = np.concatenate([[False], keep])[labels]
  high = float(np.percentile(work[head], _HIGH_PERCENTILE))
  scale = max(high - background, _MIN_CONTRAST)
  edges = smooth[r0:r1, c0:c1]
  width = max(1, round(_BORDER_FRACTION * min(edges.shape)))
  on_plateau = min(edges.shape) > 2 * width and np.median(_ring(edges, width)) > threshold
  # (Grown first: the faint rim below the threshold.)
  outline = _convex_hull(ndimage.binary_dilation(head, iterations=_OUTLINE_MARGIN))
  return (Head((top, left, bottom, right), background, scale, outline * [fy, fx], frame),
          on_plateau)


def crop_info(shape, box, margin: float) -> CropInfo:
  """The square placement of `box` inside an image of `shape`."""
  if not 0.0 <= margin < 1.0:
    raise ValueError(f'margin must be in [0, 1), got {margin}')
  top, left, bottom, right = box
  h, w = bottom - top, right - left
  if h <= 0 or w <= 0:
    raise ValueError(f'empty crop box {box}')
  longer = max(h, w)
  side = longer + 2 * int(round(margin * longer))
  return CropInfo(int(shape[0]), int(shape[1]), int(top), int(left), int(bottom), int(right),
                  int(side), (side - h) // 2, (side - w) // 2)


def apply_crop(array: np.ndarray, info: CropInfo, size: int = 128) -> np.ndarray:
  """Applies the geometric transform of `info` to an (H, W) mask: nearest neighbour, the
  array's dtype kept."""
  array = np.asarray(array)
  if array.shape != info.orig_shape:
    raise ValueError(f'array shape {array.shape} does not match the original {info.orig_shape}')
  canvas = np.zeros((info.side, info.side), np.float32)
  h, w = info.bottom - info.top, info.right - info.left
  canvas[info.pad_top:info.pad_top + h, info.pad_left:info.pad_left + w] = (
      array[info.top:info.bottom, info.left:info.right])
  return _resize(canvas, size, size, order=0).astype(array.dtype)


def to_original_grid(map_: np.ndarray, info: CropInfo) -> np.ndarray:
  """Maps a (size, size) output-space map back to the original (H, W) grid, bilinearly.

  Undoes resize, centring and crop; 0 outside the crop box. float32.
  """
  map_ = np.asarray(map_, np.float32)
  if map_.ndim != 2 or map_.shape[0] != map_.shape[1]:
    raise ValueError(f'expected a square 2-D map, got shape {map_.shape}')
  canvas = _resize(map_, info.side, info.side, order=1)
  h, w = info.bottom - info.top, info.right - info.left
  out = np.zeros(info.orig_shape, np.float32)
  out[info.top:info.bottom, info.left:info.right] = (
      canvas[info.pad_top:info.pad_top + h, info.pad_left:info.pad_left + w])
  return out


def preprocess(image: np.ndarray, size: int = 128,
               margin: float = 0.05) -> Tuple[np.ndarray, CropInfo]:
  """Raw image (H, W[, C]), any dtype -> (float32 (size, size) in [0, 1], CropInfo).

  Raises BlankImage for blank/near-blank slices, ValueError for bad arguments.
  """
  if int(size) != size or size < 1:
    raise ValueError(f'size must be a positive integer, got {size}')
  x = image_io.to_gray_float(image)
  head = find_head(x)
  info = crop_info(x.shape, head.box, margin)
  top, left, bottom, right = head.box
  canvas = np.zeros((info.side, info.side), np.float32)
  # The normalised crop is written into the canvas in place: on a big scan each copy of it
  # would be hundreds of MB.
  h, w = bottom - top, right - left
  crop = canvas[info.pad_top:info.pad_top + h, info.pad_left:info.pad_left + w]
  np.subtract(x[top:bottom, left:right], np.float32(head.background), out=crop)
  crop *= np.float32(1.0 / head.scale)
  np.clip(crop, 0.0, 1.0, out=crop)
  # What lies beside the head in its box (burnt-in letters, rulers, frame lines, the file's
  # noisy background) becomes background: it is no part of the head, and in Br35H it is more
  # often in one class's files than the other's. So does a frame line the head touches.
  crop *= outline_mask(head.outline, head.box) & ~frame_mask(head, x.shape)
  out = _resize(canvas, size, size, order=1)
  np.clip(out, 0.0, 1.0, out=out)
  return out, info
