"""Decoding of odd files: modes, bit depths, corrupt, truncated, empty, not an image."""
import io
import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
from PIL import Image
import pytest

from brainjax.data import image_io
from brainjax.data import layout
from brainjax.data import phantom
from brainjax.data import preprocess


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def _gradient(h=40, w=60):
  return (np.linspace(0, 255, h * w).reshape(h, w)).astype(np.uint8)


@pytest.mark.parametrize('mode', ['L', 'RGB', 'RGBA', 'P', 'LA', '1', 'CMYK'])
def test_modes_decode_to_gray_float(mode):
  gray = _gradient()
  image = Image.fromarray(gray).convert(mode)
  fmt = 'JPEG' if mode == 'CMYK' else 'PNG'
  out = image_io.decode_image(_encode(image, fmt))
  assert out.shape == gray.shape and out.dtype == np.float32
  assert 0.0 <= out.min() and out.max() <= 1.0
  if mode in ('L', 'RGB', 'RGBA', 'LA', 'P'):  # lossless: the gray levels survive
    np.testing.assert_allclose(out, gray / 255.0, atol=1.5 / 255)
  elif mode == 'CMYK':  # (a JPEG: close, not inverted)
    np.testing.assert_allclose(out, gray / 255.0, atol=0.05)
  else:  # '1': dithered black and white, brighter where the gradient is
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert np.corrcoef(out.ravel(), gray.ravel())[0, 1] > 0.5


def test_rgba_is_composited_on_black():
  rgba = np.zeros((10, 12, 4), np.uint8)
  rgba[..., :3] = 200
  rgba[:, :6, 3] = 255  # left half opaque, right half transparent
  out = image_io.decode_image(_encode(Image.fromarray(rgba, 'RGBA'), 'PNG'))
  np.testing.assert_allclose(out[:, :6], 200 / 255, atol=1e-3)
  np.testing.assert_allclose(out[:, 6:], 0.0, atol=1e-6)


def test_a_palette_image_s_transparent_colour_is_composited_on_black():
  image = Image.new('P', (8, 8), 1)
  image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
  image.putpixel((0, 0), 0)
  data = io.BytesIO()
  image.save(data, format='PNG', transparency=1)  # white, the background, is transparent
  np.testing.assert_array_equal(image_io.decode_image(data.getvalue()), 0.0)


def test_a_float_image_outside_0_1_on_one_side_is_stretched():
  for low, high in ((-0.5, 0.8), (0.2, 3.0)):
    values = np.linspace(low, high, 64, dtype=np.float32).reshape(8, 8)
    data = io.BytesIO()
    Image.fromarray(values, mode='F').save(data, format='TIFF')
    out = image_io.decode_image(data.getvalue())
    np.testing.assert_allclose(out, (values - low) / (high - low), atol=1e-6)


def test_a_hot_pixel_does_not_set_a_float_image_s_range():
  # A head of values up to 700 in a float TIFF: stretched by its maximum, one pixel at 1e6 made
  # it 0.0007 bright, and the slice was skipped as blank (integers are scaled by a percentile).
  y, x = np.mgrid[:256, :256]
  head = ((((y - 128) / 100) ** 2 + ((x - 128) / 80) ** 2 <= 1) * (300 + x)).astype(np.float32)
  hot = head.copy()
  hot[0, 0] = 1e6

  def decoded(values):
    data = io.BytesIO()
    Image.fromarray(values, mode='F').save(data, format='TIFF')
    return image_io.decode_image(data.getvalue())

  np.testing.assert_allclose(decoded(hot)[1:], decoded(head)[1:], atol=1e-6)
  assert decoded(hot)[0, 0] == 1.0  # (clipped)
  np.testing.assert_allclose(preprocess.preprocess(decoded(hot))[0],
                             preprocess.preprocess(decoded(head))[0], atol=1e-6)


def _png_16bit(values: np.ndarray, color_type: int) -> bytes:
  """A PNG of 16 bits a channel (PIL writes none in colour): values uint16 (H, W, C)."""
  h, w = values.shape[:2]
  rows = b''.join(b'\x00' + values[r].astype('>u2').tobytes() for r in range(h))

  def chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))

  header = struct.pack('>IIBBBBB', w, h, 16, color_type, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(rows))
          + chunk(b'IEND', b''))


def test_16bit_colour_is_refused_16bit_grey_read_in_full():
  # PIL reads 16-bit colour (and grey + alpha) into its 8-bit modes: 12-bit values kept 8 grey
  # levels, and values under 256 none (a blank skip, which sent the user the wrong way).
  gray = (np.arange(40 * 60).reshape(40, 60) % 4096).astype(np.uint16)
  np.testing.assert_allclose(image_io.decode_image(_png_16bit(gray[..., None], 0)),
                             np.minimum(gray / np.percentile(gray, 99.9, method='higher'), 1),
                             atol=1e-6)
  for channels, color_type in ((np.repeat(gray[..., None], 3, -1), 2),
                               (np.stack([gray, np.full_like(gray, 65535)], -1), 4),
                               (np.concatenate([np.repeat(gray[..., None], 3, -1),
                                                np.full_like(gray, 65535)[..., None]], -1), 6)):
    with pytest.raises(image_io.UnreadableImage, match='16 bits a channel .* save it as 16-bit '
                       'grey'):
      image_io.decode_image(_png_16bit(channels, color_type))
  # 8 bits a channel, and 16-bit grey in other formats, are read as before.
  image_io.decode_image(_encode(Image.fromarray(np.repeat(gray[..., None] // 16, 3, -1).astype(
      np.uint8)), 'PNG'))
  image_io.decode_image(_encode(Image.fromarray(gray), 'TIFF'))


def test_color_uses_luma():
  rgb = np.zeros((8, 8, 3), np.uint8)
  rgb[..., 1] = 255  # pure green
  out = image_io.decode_image(_encode(Image.fromarray(rgb, 'RGB'), 'PNG'))
  np.testing.assert_allclose(out, 0.587, atol=2 / 255)


@pytest.mark.parametrize('top,scale', [(65535, 65535), (4095, 4095), (400, 400), (200, 255)])
def test_16bit_png_scaled_by_its_maximum_at_least_255(top, scale):
  # Scanners store 12-bit data or less in 16-bit files: by 65535 such slices look blank.
  values = np.array([[0, top // 3, top], [top // 2, top // 4, 7]], np.uint16)
  data = _encode(Image.fromarray(values), 'PNG')
  with Image.open(io.BytesIO(data)) as check:
    assert check.mode.startswith('I')  # really stored as 16-bit
  out = image_io.decode_image(data)
  np.testing.assert_allclose(out, values / scale, atol=1e-6)


def test_float_and_bool_arrays():
  np.testing.assert_allclose(image_io.to_gray_float(np.array([[np.nan, 0.5]])), [[0.0, 0.5]])
  np.testing.assert_allclose(image_io.to_gray_float(np.array([[np.inf, 0.5]])), [[1.0, 0.5]])
  # Outside [0, 1] (a scanner's units, or 0-255), stretched as float image files are: clipped,
  # such an array was judged blank.
  scan = phantom.phantom_slice(3, 0, positive=True).image
  expected = image_io.to_gray_float(scan)
  for stretched in (scan.astype(np.float32), 3.5 * scan - 80.0):
    got = image_io.to_gray_float(stretched)
    np.testing.assert_allclose(preprocess.preprocess(got)[0], preprocess.preprocess(expected)[0],
                               atol=1e-5)
  hot = scan.astype(np.float32)
  hot[0, 0] = 1e9
  np.testing.assert_allclose(image_io.to_gray_float(hot)[1:], image_io.to_gray_float(
      scan.astype(np.float32))[1:], atol=1e-6)
  np.testing.assert_allclose(image_io.to_gray_float(np.full((3, 3), 1.7)), 0.0)  # (constant)
  with_alpha = np.stack([scan.astype(np.float32), np.ones(scan.shape, np.float32)], axis=-1)
  np.testing.assert_allclose(image_io.to_gray_float(with_alpha),
                             image_io.to_gray_float(scan.astype(np.float32)), atol=1e-6)
  assert image_io.to_gray_float(np.ones((2, 2), bool)).max() == 1.0
  with pytest.raises(ValueError, match=r'expected an \(H, W\) or \(H, W, 1\|2\|3\|4\) image'):
    image_io.to_gray_float(np.zeros((2, 2, 5)))
  with pytest.raises(ValueError, match='empty image of shape'):
    image_io.to_gray_float(np.zeros((0, 4)))



@pytest.mark.parametrize('dtype', [np.int64, np.int32, np.uint16, np.int16])
def test_wide_integer_arrays_scale_by_their_own_maximum(dtype):
  # (An int64 array of 0-255 values, as np.array of Python ints makes, was scaled by 2**63 - 1
  # and judged blank; 12-bit data in uint16 by 65535.)
  values = np.array([[0, 100], [200, 400]])
  expected = values / 400.0
  np.testing.assert_allclose(image_io.to_gray_float(values.astype(dtype)), expected, rtol=1e-6)
  np.testing.assert_allclose(image_io.to_gray_float((values // 4).astype(dtype)),
                             (values // 4) / 255.0, rtol=1e-6)  # at least 255: dark stays dark
  if np.issubdtype(dtype, np.signedinteger):
    np.testing.assert_allclose(image_io.to_gray_float(np.array([[-5, 255]], dtype)), [[0, 1]])
  scan = phantom.phantom_slice(3, 0, positive=True).image
  as_bytes = np.round(np.clip(scan, 0, 1) * 255)
  np.testing.assert_allclose(image_io.to_gray_float(as_bytes.astype(dtype)),
                             image_io.to_gray_float(as_bytes.astype(np.uint8)), rtol=1e-6)

def test_a_hot_pixel_or_an_alpha_channel_does_not_set_a_wide_image_s_scale():
  # A head of values up to 400 in a 16-bit slice: by the maximum, one pixel at 65535 (or an
  # opaque 16-bit alpha channel) made it 0.006 bright, and the slice was skipped as blank.
  y, x = np.mgrid[:256, :256]
  head = ((((y - 128) / 100) ** 2 + ((x - 128) / 80) ** 2 <= 1) * 400).astype(np.uint16)
  expected, _ = preprocess.preprocess(head)
  hot = head.copy()
  hot[0, :60] = 65535  # 60 px: under 0.1% of the image
  alpha = np.stack([head, np.full_like(head, 65535)], axis=-1)
  for image in (hot, alpha, np.concatenate([np.repeat(head[..., None], 3, -1), alpha[..., 1:]],
                                           axis=-1)):
    np.testing.assert_allclose(preprocess.preprocess(image)[0], expected, atol=1e-6)
  np.testing.assert_allclose(image_io.to_gray_float(hot)[1:], head[1:] / 400.0, rtol=1e-6)
  # An alpha channel is scaled by its own maximum, however few pixels reach it.
  sparse_alpha = np.stack([np.full((100, 100), 1000, np.uint16)] * 2, axis=-1)
  sparse_alpha[0, :5, 1] = 65535
  assert image_io.to_gray_float(sparse_alpha)[50, 50] == pytest.approx(1000 / 65535, rel=1e-5)
  assert image_io.to_gray_float(hot)[0, 0] == 1.0  # (clipped)


@pytest.mark.parametrize('data,reason', [
    (b'', 'empty'),
    (b'hello, this is a text file\n' * 10, 'not a recognised image'),
    (b'\x89PNG\r\n\x1a\n' + b'\x00' * 50, 'corrupt|not a recognised'),
    (b'\xff\xd8\xff\xe0' + b'\x13' * 100, 'truncated|corrupt|not a recognised'),
])
def test_garbage_raises_unreadable(data, reason):
  with pytest.raises(image_io.UnreadableImage, match=reason):
    image_io.decode_image(data)


@pytest.mark.parametrize('fmt,cuts', [('JPEG', (0.5, 0.9, -2)), ('PNG', (0.5, 0.9))])
def test_truncated_files_raise(fmt, cuts):
  """Files cut anywhere that loses pixel data; for JPEG even just the end marker."""
  rng = np.random.default_rng(0)
  noisy = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
  data = _encode(noisy, fmt)
  image_io.decode_image(data)  # the complete file is fine
  for cut in cuts:
    end = int(len(data) * cut) if cut > 0 else len(data) + cut
    with pytest.raises(image_io.UnreadableImage, match='truncated'):
      image_io.decode_image(data[:end])



def test_a_jpeg_with_data_after_its_end_reads_and_a_truncated_one_never_does(monkeypatch):
  data = _encode(Image.fromarray(_gradient()), 'JPEG')
  trailer = b'motion photo \xff\xda\x00\x01 video bytes'  # (holds a start-of-scan marker)
  np.testing.assert_array_equal(image_io.decode_image(data + trailer),
                                image_io.decode_image(data))
  from PIL import ImageFile  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)  # (PIL would pad it)
  with pytest.raises(image_io.UnreadableImage, match='truncated'):
    image_io.decode_image(data[:-2])

def _dds_r16(h=8, w=8):
  """A well-formed DDS of DXGI format 56 (16-bit grey), which PIL identifies, not decodes."""
  header = (struct.pack('<IIIIIII', 124, 0x100F, h, w, w * 2, 0, 1) + b'\0' * 44
            + struct.pack('<II4sIIIII', 32, 0x4, b'DX10', 0, 0, 0, 0, 0)
            + struct.pack('<IIIII', 0x1000, 0, 0, 0, 0))
  return b'DDS ' + header + struct.pack('<IIIII', 56, 3, 0, 1, 0) + b'\x10' * (2 * h * w)


def test_a_format_pil_identifies_but_cannot_decode_is_unreadable():
  # (PIL raised NotImplementedError, which training and predict let through as a traceback)
  with pytest.raises(image_io.UnreadableImage, match='corrupt or truncated image: Unimplemented'):
    image_io.decode_image(_dds_r16())


def test_a_file_too_large_for_an_image_is_refused_unread(tmp_path):
  path = tmp_path / 'stray_backup.jpg'
  with open(path, 'wb') as f:  # sparse: no disk used
    f.truncate(layout.MAX_IMAGE_BYTES + 1)
  with pytest.raises(image_io.UnreadableImage, match='file too large for an image'):
    image_io.read_image_file(path)


def test_unreadable_is_a_value_error_with_one_line_reason(tmp_path):
  path = tmp_path / 'notes.txt'
  path.write_text('not a scan')
  with pytest.raises(ValueError) as info:
    image_io.read_image_file(path)
  assert isinstance(info.value, image_io.UnreadableImage) and '\n' not in str(info.value)
  with pytest.raises(image_io.UnreadableImage, match='cannot read'):
    image_io.read_image_file(tmp_path / 'missing.png')


def test_reading_never_modifies_the_file(tmp_path):
  path = tmp_path / 'scan.jpg'
  Image.fromarray(_gradient()).save(path)
  before = path.read_bytes()
  image_io.read_image_file(path)
  assert path.read_bytes() == before


@pytest.mark.parametrize('fmt', ['PNG', 'JPEG'])
def test_exif_orientation_is_applied(fmt):
  # A phone photo of a slice stored sideways with orientation 6 (display rotated 90° clockwise).
  stored = np.zeros((20, 40), np.uint8)
  stored[:5, :10] = 255  # top left as stored
  exif = Image.Exif()
  exif[0x0112] = 6
  buffer = io.BytesIO()
  Image.fromarray(stored).save(buffer, fmt, exif=exif.tobytes())
  shown = image_io.decode_image(buffer.getvalue())
  assert shown.shape == (40, 20)
  assert shown[:10, -5:].mean() > 0.9 and shown[:10, :5].mean() < 0.1  # top right as shown


@pytest.mark.parametrize('fmt', ['TIFF', 'GIF', 'PNG'])
def test_several_frames_are_refused_one_frame_read(fmt):
  # A stack of slices (multi-page TIFF, animated GIF or PNG) is not one slice: refused,
  # so a caller counts a skip instead of training on whichever frame comes first.
  frames = [Image.fromarray(_gradient()), Image.fromarray(255 - _gradient())]
  stack = _encode(frames[0], fmt, save_all=True, append_images=frames[1:])
  with pytest.raises(image_io.UnreadableImage, match='2 frames in one file'):
    image_io.decode_image(stack)
  single = image_io.decode_image(_encode(frames[0], fmt))
  np.testing.assert_allclose(single, _gradient() / 255.0, atol=1.5 / 255)


def test_a_camera_mpo_jpeg_reads_its_main_picture():
  frames = [Image.fromarray(_gradient()).convert('RGB'), Image.new('RGB', (60, 40))]
  mpo = _encode(frames[0], 'MPO', save_all=True, append_images=frames[1:])
  with Image.open(io.BytesIO(mpo)) as image:
    assert image.format == 'MPO' and image.n_frames == 2
  np.testing.assert_allclose(image_io.decode_image(mpo), _gradient() / 255.0, atol=3 / 255)


def test_an_image_over_pils_pixel_limit_is_refused_without_pils_warning():
  # The skip's reason says it once: PIL's warning from its open would repeat it on stderr.
  code = ('import io; from PIL import Image; from brainjax.data import image_io\n'
          'Image.MAX_IMAGE_PIXELS = 100; out = io.BytesIO()\n'
          'Image.new("L", (12, 12)).save(out, "PNG")\n'
          'try:\n  image_io.decode_image(out.getvalue())\n'
          'except image_io.UnreadableImage as e:\n  print(e)\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          timeout=60)
  assert result.stdout.startswith('image too large') and result.stderr == ''


@pytest.mark.parametrize('side', [12, 20])  # PIL only warns at 144 pixels, refuses at 400
def test_an_image_over_pils_pixel_limit_is_refused(side, monkeypatch):
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)
  data = _encode(Image.fromarray(np.full((side, side), 128, np.uint8)), 'PNG')
  with warnings.catch_warnings():  # (pytest drops the filter image_io sets as it is imported)
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)
    with pytest.raises(image_io.UnreadableImage, match='image too large'):
      image_io.decode_image(data)
  small = _encode(Image.fromarray(np.full((9, 9), 128, np.uint8)), 'PNG')
  assert image_io.decode_image(small)[0, 0] == pytest.approx(128 / 255)
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', None)  # lifted: any size reads
  assert image_io.decode_image(data).shape == (side, side)
