"""Decodes image files of any common mode into float32 grayscale in [0, 1].

Br35H mixes JPEG and PNG in modes RGB, L, RGBA and P; other collections add
16-bit PNGs. Everything becomes a 2-D float32 array, oriented as the file is
displayed (EXIF orientation applied), so that preprocessing sees one format.
Files that cannot be decoded completely, and files of several frames (a TIFF stack,
an animated GIF), raise `UnreadableImage` with a one-line reason, so callers can count
and log a skip.

Truncation: PIL raises on truncated data as long as
`PIL.ImageFile.LOAD_TRUNCATED_IMAGES` keeps its default (False); we never set
it. JPEGs are additionally checked for their end-of-image marker, so a
truncated JPEG is refused even if another library enabled silent padding.
"""
import io
import os
import re
import struct
import warnings

import numpy as np
from PIL import Image
from PIL import ImageFile
from PIL import ImageOps

from brainjax.data import layout

# ITU-R BT.601 luma, the weights PIL uses for 'RGB' -> 'L'.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_JPEG_SOI, _JPEG_SOS, _JPEG_EOI = b'\xff\xd8', b'\xff\xda', b'\xff\xd9'
_EXIF_ORIENTATION = 0x0112
# PIL warns of an image over its pixel limit as it opens it; decode_image then refuses it
# with the reason (a counted, logged skip), so the warning would only say it again, on stderr.
# Set once, here: warnings filters are process-wide, not a decoding thread's to change.
warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)


class UnreadableImage(ValueError):
  """The bytes are not a complete, decodable image."""


def _check_jpeg_complete(data: bytes):
  # Marker bytes never occur inside entropy-coded data (0xFF is stuffed), so a
  # complete file has its end-of-image marker after the start of its last scan. (Data
  # appended after the image, e.g. a phone's motion-photo video, can hold those bytes
  # too: checked only where PIL would pad a truncated file, see decode_image.)
  if data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
    raise UnreadableImage('truncated JPEG (no end-of-image marker after the last scan)')


_TOP_PERCENTILE = 99.9  # the top value of a wide-integer image (see to_gray_float)


def _scaled(values: np.ndarray, percentile: float) -> np.ndarray:
  """float32 values / max(255, their `percentile`-th percentile, a value they hold), at most 1."""
  top = float(np.percentile(values, percentile, method='higher'))
  return np.minimum(values / max(255.0, top), 1.0).astype(np.float32)


def _stretched(x: np.ndarray) -> np.ndarray:
  """Float values outside [0, 1] stretched to it between their 0.1th and 99.9th percentiles (the
  minimum and maximum where those are equal), clipped beyond: one hot pixel set the top when
  the maximum did, and the head was judged blank. Values within [0, 1] are kept."""
  if x.min() >= 0.0 and x.max() <= 1.0:
    return x
  low = np.percentile(x, 100 - _TOP_PERCENTILE, method='lower')
  high = np.percentile(x, _TOP_PERCENTILE, method='higher')
  if high <= low:
    low, high = x.min(), x.max()
  if high <= low:  # (a constant image)
    return np.zeros_like(x)
  return np.clip((x - low) / (high - low), 0.0, 1.0).astype(x.dtype)


def to_gray_float(array: np.ndarray) -> np.ndarray:
  """(H, W) or (H, W, C) integer, bool or float array -> float32 (H, W) in [0, 1].

  uint8 is scaled by 255. Wider integers are scaled by the image's own top value, at least
  255, negatives clipped to 0: scanners store 10- to 12-bit data, or less, in 16-bit
  arrays (by 65535 a clear head of values up to 400 has a contrast of 0.006 and would be
  judged blank), and an int64 array of 0-255 values would be near 0 by its dtype's range;
  preprocessing normalises every slice's intensity anyway. The top value is the 99.9th
  percentile of the grey or colour values (the values above it clipped), so that hot pixels
  or a burnt-in mark at 65535 covering under 0.1% of the image do not set it (the maximum
  did, and the head was judged blank); an alpha channel is scaled by its own maximum.
  Float arrays in [0, 1] are kept (NaN as 0, infinities as 0 or 1); outside it (a scanner's
  units, or 0-255) they are stretched between their 0.1th and 99.9th percentiles (the alpha
  channel clipped): clipped, they were judged blank. RGB uses BT.601 luma; a 4th (alpha)
  channel is composited onto black; 2 channels are gray + alpha.
  """
  array = np.asarray(array)
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4)):
    raise ValueError(f'expected an (H, W) or (H, W, 1|2|3|4) image, got shape {array.shape}')
  if array.size == 0:
    raise ValueError(f'empty image of shape {array.shape}')
  if array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3:
    # BT.601 luma in C (PIL) is several times faster than in numpy.
    gray = np.asarray(Image.fromarray(array, mode='RGB').convert('L')).astype(np.float32)
    gray /= np.float32(255.0)  # in place: one image-sized float array, not two
    return gray
  if array.dtype == np.bool_:
    x = array.astype(np.float32)
  elif array.dtype == np.uint8:
    x = array.astype(np.float32)
    x /= np.float32(255.0)
  elif np.issubdtype(array.dtype, np.integer):
    wide = np.maximum(array.astype(np.float64), 0.0)
    if wide.ndim == 3 and wide.shape[-1] in (2, 4):
      x = np.concatenate([_scaled(wide[..., :-1], _TOP_PERCENTILE), _scaled(wide[..., -1:], 100)],
                         axis=-1)
    else:
      x = _scaled(wide, _TOP_PERCENTILE)
  else:
    x = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if x.ndim == 3 and x.shape[-1] in (2, 4):
      x = np.concatenate([_stretched(x[..., :-1]), np.clip(x[..., -1:], 0.0, 1.0)], axis=-1)
    else:
      x = _stretched(x)
  if x.ndim == 3:
    channels = x.shape[-1]
    alpha = x[..., -1] if channels in (2, 4) else None
    color = x[..., :3] if channels >= 3 else x[..., :1]
    x = color @ _LUMA if color.shape[-1] == 3 else color[..., 0]
    if alpha is not None:
      x = x * alpha
  if not np.isfinite(x).all():
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
  x = np.ascontiguousarray(x, np.float32)  # x is this function's own copy: clip it in place
  return np.clip(x, 0.0, 1.0, out=x)


def _is_wide_colour(image: Image.Image) -> bool:
  """Whether PIL would decode 16 bits a channel (its raw mode, e.g. 'RGB;16B') into one of its
  8-bit modes (RGB, RGBA for grey + alpha): only grey has 16-bit modes (I;16), so the low bytes
  would be lost: 12-bit data kept 8 grey levels, and values under 256 none (a blank skip)."""
  if image.mode.startswith('I') or image.mode == 'F':
    return False
  for tile in image.tile:
    args = tile[3]
    raw_mode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ''
    # (';16' with a byte order: 16 bits a channel; a 16-bit BMP's 'BGR;16' packs 5-6-5 bits)
    if isinstance(raw_mode, str) and re.search(r';16[BLN]$', raw_mode):
      return True
  return False


def _pil_to_array(image: Image.Image) -> np.ndarray:
  """Loaded PIL image -> float32 (H, W) in [0, 1]."""
  mode = image.mode
  if mode == 'P':
    image = image.convert('RGBA' if 'transparency' in image.info else 'RGB')
  elif mode in ('1', 'CMYK', 'YCbCr', 'LAB', 'HSV', 'PA', 'RGBX', 'RGBa', 'La'):
    image = image.convert('RGBA' if mode in ('PA', 'RGBa', 'La') else 'RGB')
  mode = image.mode
  if mode.startswith('I;16') or mode == 'I':  # 16-bit PNG/TIFF (and 32-bit ints)
    return to_gray_float(np.asarray(image))
  if mode in ('F', 'LA', 'RGBA'):
    return to_gray_float(np.asarray(image))
  if mode != 'L':
    image = image.convert('L')  # BT.601 luma in C: much faster than in numpy
  return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def _displayed_array(image: Image.Image) -> np.ndarray:
  """A loaded PIL image as it is displayed (turned as its EXIF says), by _pil_to_array."""
  if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
    image = ImageOps.exif_transpose(image)
  return _pil_to_array(image)


def pil_image_to_gray(image: Image.Image) -> np.ndarray:
  """A PIL image in memory -> float32 (H, W) in [0, 1], as decode_image reads its file (a
  palette's colours, not its indices; CMYK and alpha converted; turned as its EXIF says)."""
  try:
    image.load()
    return _displayed_array(image)
  except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UnreadableImage(f'cannot read the PIL image: {reason}') from None


def decode_image(data: bytes) -> np.ndarray:
  """Raw file bytes -> float32 (H, W) grayscale in [0, 1].

  Raises UnreadableImage for empty, non-image, corrupt or truncated data.
  """
  if not data:
    raise UnreadableImage('empty file')
  if data[:2] == _JPEG_SOI and ImageFile.LOAD_TRUNCATED_IMAGES:
    # (PIL refuses a truncated JPEG itself unless that process-wide option was set.)
    _check_jpeg_complete(data)
  try:
    with Image.open(io.BytesIO(data)) as image:
      # PIL refuses images over twice its limit and only warns between once and twice: checked
      # here, before decoding.
      limit = Image.MAX_IMAGE_PIXELS  # (None: the user lifted it)
      if limit is not None and image.width * image.height > limit:
        raise UnreadableImage(f'image too large: {image.width} x {image.height} pixels, over '
                              f'the limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS)')
      if _is_wide_colour(image):
        raise UnreadableImage(f'16 bits a channel in a {image.format} that PIL reads as 8-bit '
                              f'{image.mode}: save it as 16-bit grey, which it reads in full')
      if image.format == 'JPEG' and image.mode in ('RGB', 'YCbCr'):
        image.draft('L', image.size)  # decode only the luma plane, full size
      image.load()
      if image.width == 0 or image.height == 0:
        raise UnreadableImage(f'image has zero size {image.size}')
      # A stack of slices or an animation: which frame would be the slice? (A camera's
      # MPO JPEG keeps previews or other views after its main picture, the first frame.)
      frames = getattr(image, 'n_frames', 1)
      if frames > 1 and image.format != 'MPO':
        raise UnreadableImage(f'{frames} frames in one file (a stack or an animation): '
                              'save each slice as a file of its own')
      return _displayed_array(image)
  except UnreadableImage:
    raise
  except Image.UnidentifiedImageError:
    raise UnreadableImage('not a recognised image format') from None
  except Image.DecompressionBombError as e:
    raise UnreadableImage(f'image too large: {e}') from None
  except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
          NotImplementedError) as e:  # (the last: a format variant PIL identifies, not decodes)
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UnreadableImage(f'corrupt or truncated image: {reason}') from None


def read_image_file(path) -> np.ndarray:
  """Reads and decodes one file (never modified) of at most layout.MAX_IMAGE_BYTES; see
  decode_image."""
  path = os.fspath(path)
  try:
    with layout.open_file(path) as f:
      size = os.fstat(f.fileno()).st_size
      if size > layout.MAX_IMAGE_BYTES:
        raise UnreadableImage(f'file too large for an image ({size / 2**30:.1f} GiB, over '
                              f'{layout.MAX_IMAGE_BYTES >> 20} MiB)')
      data = f.read()
  except OSError as e:
    raise UnreadableImage(f'cannot read file: {e.strerror or e}') from None
  return decode_image(data)
