"""Procedural axial brain-MRI phantom: the embedded default data set.

Each slice is drawn on coordinate grids (vectorised float32 numpy, no pixel
loops, only over the head's box):
  * head: scalp, skull (with diploe), subarachnoid CSF, brain; a slightly
    irregular egg-shaped outline;
  * brain: cortical grey-matter ribbon folded into gyri (white-matter fingers)
    and meandering sulci, interhemispheric fissure, white matter, deep grey
    nuclei and lateral ventricles whose presence and size depend on the slice
    level; low-frequency tissue texture;
  * sequences: T1, T1 with contrast, T2 and FLAIR tissue contrasts;
  * Br35H-like nuisance: canvas size and aspect ratio, head size and position,
    small rotations, background level, bias field, gain and gamma,
    Rician-like noise, occasional burnt-in text, frame lines and rulers,
    grayscale or RGB storage;
  * tumour-positive slices: 1-3 irregular lesions (ring-enhancing with a
    necrotic core, or solid; heterogeneous), surrounding edema that spreads
    mostly in white matter, and mass effect (the anatomy is pushed away from
    each lesion). Size (about 10-35% of the brain's diameter, like Br35H's
    tumours) and contrast vary, so some lesions are subtle.

The mask is the whole lesion (core + visible edema, the BraTS "whole tumour"
convention) inside the brain. Deterministic in (seed, index, positive).
"""
import dataclasses
import math
from typing import Dict, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

# Tissue intensities per sequence (before gain/gamma/noise).
_TISSUES = ('scalp', 'skull', 'diploe', 'csf', 'gm', 'wm', 'deep', 'edema', 'solid', 'rim',
            'necrosis')
SEQUENCES = {
    't1': (0.85, 0.06, 0.45, 0.10, 0.45, 0.68, 0.52, 0.38, 0.38, 0.42, 0.15),
    't1c': (0.85, 0.06, 0.45, 0.10, 0.45, 0.68, 0.52, 0.40, 0.88, 0.96, 0.15),
    't2': (0.55, 0.05, 0.30, 0.95, 0.55, 0.36, 0.45, 0.82, 0.72, 0.62, 0.95),
    'flair': (0.60, 0.05, 0.35, 0.08, 0.56, 0.42, 0.50, 0.92, 0.80, 0.72, 0.30),
}
_SEQUENCE_PROBS = {'t1': 0.2, 't1c': 0.3, 't2': 0.3, 'flair': 0.2}
_F32 = np.float32
_RENDER_SIDE = 200  # the head is drawn at most this large, then resized


@dataclasses.dataclass(frozen=True)
class PhantomSlice:
  """image: uint8 (H, W) or (H, W, 3); mask: uint8 (H, W) in {0, 1}."""
  image: np.ndarray
  mask: np.ndarray


def _atan2(y, x):
  """float32 atan2 by a polynomial (error < 3e-4 rad); np.arctan2 is ~10x slower."""
  ax, ay = np.abs(x), np.abs(y)
  a = np.minimum(ax, ay) / np.maximum(np.maximum(ax, ay), _F32(1e-12))
  s = a * a
  r = ((_F32(-0.0464964749) * s + _F32(0.15931422)) * s - _F32(0.327622764)) * s * a + a
  r = np.where(ay > ax, _F32(math.pi / 2) - r, r)
  r = np.where(x < 0, _F32(math.pi) - r, r)
  return np.where(y < 0, -r, r)


def _inside(x, edge, width):
  """1 well inside (x < edge), 0 outside, a linear ramp of `width` at the edge."""
  return np.clip((edge - x) * _F32(1.0 / width) + _F32(0.5), _F32(0.0), _F32(1.0))


def _angular(rng, phi, orders, amplitude):
  """A smooth random periodic function of the angle phi."""
  out = np.zeros_like(phi)
  for k in orders:
    weight = float(amplitude / k ** 0.5 * rng.standard_normal())
    out += _F32(weight) * np.cos(_F32(k) * phi + _F32(rng.uniform(0, 2 * math.pi)))
  return out


def _smooth_field(rng, shape, cells):
  """Zero-mean, unit-variance-ish low-frequency random field of `shape`."""
  coarse = rng.standard_normal((cells, cells)).astype(np.float32)
  image = Image.fromarray(coarse, mode='F').resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
  return np.asarray(image)


def _blend(base, value, weight):
  return base + weight * (value - base)


def _canvas_shape(rng) -> Tuple[int, int]:
  if rng.uniform() < 0.04:  # a few large scans, as in Br35H
    width = int(rng.uniform(480, 720))
  else:
    width = int(np.clip(rng.lognormal(math.log(280), 0.2), 170, 460))
  height = int(width * rng.uniform(0.85, 1.3))
  return height, width


def _anatomy(rng, u, v, level: float, t: Dict[str, float]):
  """Brain tissue intensity at (warped) brain coordinates (1 = brain edge).

  Returns (intensity, white-matter weight).
  """
  r = np.hypot(u, v)
  phi = _atan2(v, u)
  shape = u.shape
  meander = _smooth_field(rng, shape, 10)
  detail = _smooth_field(rng, shape, 18)
  # Gyri: folds roughly perpendicular to the surface that meander; crowns
  # (wave > 0) carry white-matter fingers, troughs hold sulci.
  lobes = int(rng.integers(22, 32))
  wave = np.cos(_F32(lobes) * phi + _F32(2.2) * meander + _F32(2.5) * detail + _F32(4.0) * r)
  wm_edge = _F32(0.58) + _F32(0.06) * detail + _F32(0.2) * np.clip(wave, 0, 1) ** _F32(0.7)
  wm = _inside(r, wm_edge, 0.04)
  value = _blend(np.full(shape, t['gm'], np.float32), _F32(t['wm']), wm)
  sulci = (wave < _F32(-0.9) + _F32(0.05) * detail) & (r > _F32(0.72) + _F32(0.07) * meander)
  # Interhemispheric fissure, in front and behind the ventricles.
  fissure = (np.abs(u + _F32(0.015) * meander) < _F32(0.01) + _F32(0.01) * (r > 0.7)) & (
      (v < _F32(-0.3 - 0.3 * (1 - level))) | (v > _F32(0.5)))
  csf = sulci | fissure
  # Deep grey nuclei and lateral ventricles on mid-level slices.
  mid = float(np.clip(1.2 - abs(level - 0.5) * 2.6, 0.0, 1.0))
  if mid > 0:
    size = mid * float(rng.uniform(0.6, 1.5))
    half = 0.3 + 0.1 * size  # half length of each lateral ventricle
    s_ = v * _F32(1 / half)  # -1 front ... +1 back
    curve = _F32(0.05 + 0.02 * size) + _F32(0.07) * s_ * s_  # diverging horns
    width = _F32(0.02 + 0.05 * size) * (_F32(1.2) - _F32(0.6) * np.abs(s_ + _F32(0.3)))
    ventricles = (np.abs(np.abs(u) - curve) < width) & (np.abs(s_ + _F32(0.1)) < _F32(1.0))
    csf |= ventricles | ((np.abs(u) < _F32(0.012 * size)) & (np.abs(v - _F32(0.1)) < _F32(0.1)))
    au = np.abs(u)
    deep = np.minimum(
        ((au - _F32(0.24)) * _F32(1 / 0.08)) ** 2 + ((v + _F32(0.02)) * _F32(1 / 0.17)) ** 2,
        ((au - _F32(0.12)) * _F32(1 / 0.09)) ** 2 + ((v - _F32(0.2)) * _F32(1 / 0.11)) ** 2)
    value = _blend(value, _F32(t['deep']), _inside(deep, mid, 0.3))
  texture = _smooth_field(rng, shape, 40)
  value = value * (_F32(1.0) + _F32(0.035) * texture)
  value = np.where(csf, _F32(t['csf']), value)
  return value, wm * ~csf


def _sample_lesions(rng, count):
  """Centre (brain coordinates), radius and extent of the edema of each lesion."""
  lesions = []
  for _ in range(count):
    # Version 1 drew 6-26%, with cores from 45% strength: the quick study's BrainCNN
    # (420 slices) reached a test ROC AUC of 0.75 on it, 0.91 on these.
    radius = math.exp(rng.uniform(math.log(0.10), math.log(0.35)))
    rho = rng.uniform(0.1, 0.78 - 0.5 * radius)
    angle = rng.uniform(0, 2 * math.pi)
    lesions.append(dict(cu=rho * math.cos(angle), cv=rho * math.sin(angle), radius=radius,
                        extent=rng.uniform(1.05, 2.1)))
  return lesions


def _draw_lesions(rng, u, v, wm_weight, lesions):
  """Soft weights of the lesion parts and the whole-lesion mask."""
  parts = {k: np.zeros_like(u) for k in ('core', 'necrosis', 'rim', 'solid', 'edema')}
  texture = _smooth_field(rng, u.shape, 24)
  for lesion in lesions:
    radius, extent = lesion['radius'], lesion['extent']
    du, dv = u - _F32(lesion['cu']), v - _F32(lesion['cv'])
    alpha = _atan2(dv, du)
    dist = np.hypot(du, dv)
    outline = _F32(1.0) + _angular(rng, alpha, (2, 3, 4, 5), 0.13) + _F32(0.05) * texture
    d = dist / (_F32(radius) * outline)
    core = _inside(d, 1.0, 0.15) * _F32(rng.uniform(0.7, 1.0))
    if rng.uniform() < 0.55:  # ring-enhancing with a necrotic centre
      necrotic = _inside(d, rng.uniform(0.4, 0.75), 0.2)
      parts['necrosis'] = np.maximum(parts['necrosis'], necrotic * core)
      parts['rim'] = np.maximum(parts['rim'], (1 - necrotic) * core)
    else:
      parts['solid'] = np.maximum(parts['solid'], core)
    parts['core'] = np.maximum(parts['core'], core)
    spread = _F32(1.0) + _angular(rng, alpha, (2, 3, 5, 7), 0.2) + _F32(0.1) * texture
    d_edema = dist / (_F32(radius * extent) * spread)
    edema = _inside(d_edema, 1.0, 0.3) * _F32(rng.uniform(0.5, 1.0))
    parts['edema'] = np.maximum(parts['edema'], edema * (_F32(0.35) + _F32(0.65) * wm_weight))
  parts['texture'] = texture
  mask = (parts['core'] > 0.2) | (parts['edema'] > 0.15)
  return parts, mask


def _mass_effect(u, v, lesions):
  """Anatomy coordinates pushed away from each lesion (monotone: no folding)."""
  for lesion in lesions:
    reach = lesion['radius'] * max(lesion['extent'], 1.3)
    du, dv = u - _F32(lesion['cu']), v - _F32(lesion['cv'])
    pull = _F32(0.6) * np.exp((du * du + dv * dv) * _F32(-0.5 / reach ** 2))
    u, v = u - du * pull, v - dv * pull
  return u, v


def _head(rng, height, width, positive):
  """Draws the head on its bounding box; returns (image, mask, box)."""
  a = rng.uniform(0.32, 0.46) * height
  b = min(a * rng.uniform(0.72, 0.9), 0.47 * width)
  cy = height / 2 + rng.uniform(-1, 1) * max(0.0, 0.48 * height - a)
  cx = width / 2 + rng.uniform(-1, 1) * max(0.0, 0.48 * width - b)
  theta = math.radians(float(np.clip(rng.normal(0, 5), -12, 12)))
  reach = 1.05 * max(a, b)
  top, bottom = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
  left, right = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
  # Drawn on a grid of at most _RENDER_SIDE px, then resized to the box.
  step = max(1.0, max(bottom - top, right - left) / _RENDER_SIDE)
  rows = max(2, round((bottom - top) / step))
  cols = max(2, round((right - left) / step))
  ys = top - 0.5 + (np.arange(rows, dtype=np.float32) + 0.5) * ((bottom - top) / rows)
  xs = left - 0.5 + (np.arange(cols, dtype=np.float32) + 0.5) * ((right - left) / cols)
  yy, xx = ys[:, None], xs[None, :]
  dx, dy = xx - _F32(cx), yy - _F32(cy)
  c, s = _F32(math.cos(theta)), _F32(math.sin(theta))
  u = (dx * c + dy * s) * _F32(1 / b)
  v = (dy * c - dx * s) * _F32(1 / a)
  u = u / (_F32(1.0) + _F32(0.06) * v)  # egg shape: wider at the back
  rn = np.hypot(u, v)
  rn = rn / (_F32(1.0) + _angular(rng, _atan2(v, u), (2, 3, 4), 0.02))

  sequence = rng.choice(list(_SEQUENCE_PROBS), p=list(_SEQUENCE_PROBS.values()))
  t = dict(zip(_TISSUES, SEQUENCES[sequence]))
  level = float(rng.uniform(0.0, 1.0))
  skull_out = 1.0 - rng.uniform(0.05, 0.1)
  csf_out = skull_out - rng.uniform(0.04, 0.07)
  brain_out = csf_out - rng.uniform(0.012, 0.03)
  edge = 1.5 * step / max(a, b)  # about 1.5 px of partial volume

  image = _F32(t['scalp']) * _inside(rn, 1.0, edge)
  skull = _inside(rn, skull_out, edge)
  middle, half = (skull_out + csf_out) / 2, 0.2 * (skull_out - csf_out)
  diploe = np.exp(-((rn - _F32(middle)) * _F32(1 / half)) ** 2)
  image = _blend(image, _F32(t['skull']) + _F32(0.6 * (t['diploe'] - t['skull'])) * diploe, skull)
  image = _blend(image, _F32(t['csf']), _inside(rn, csf_out, edge))
  brain = _inside(rn, brain_out, edge)

  bu, bv = u * _F32(1 / brain_out), v * _F32(1 / brain_out)  # 1 at the brain's edge
  lesions = []
  if positive:
    lesions = _sample_lesions(rng, 1 + int(rng.uniform() < 0.25) + int(rng.uniform() < 0.05))
  au, av = _mass_effect(bu, bv, lesions)
  tissue, wm_weight = _anatomy(rng, au, av, level, t)
  tissue = tissue * (_F32(1.0) + _F32(0.04) * _smooth_field(rng, u.shape, 12))
  mask = np.zeros(u.shape, bool)
  if lesions:
    parts, mask = _draw_lesions(rng, bu, bv, wm_weight, lesions)
    mask &= brain > 0.5
    tissue = _blend(tissue, _F32(t['edema']), parts['edema'])
    total = parts['necrosis'] + parts['rim'] + parts['solid']
    core = (parts['necrosis'] * _F32(t['necrosis']) + parts['rim'] * _F32(t['rim'])
            + parts['solid'] * _F32(t['solid'])) / np.maximum(total, _F32(1e-6))
    core = core * (_F32(1.0) + _F32(0.12) * parts['texture'])
    tissue = _blend(tissue, core, parts['core'])
  image = _blend(image, tissue, brain)
  # Scanner blur (partial volume) and bias field, at the drawing resolution.
  image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.0) / step, truncate=2.0)
  image *= _F32(1.0) + _F32(0.12) * _smooth_field(rng, image.shape, 3)
  size = (right - left, bottom - top)
  if image.shape != (bottom - top, right - left):
    image = np.asarray(Image.fromarray(image, mode='F').resize(size, Image.Resampling.BILINEAR))
    mask = Image.fromarray(mask.astype(np.float32), mode='F')
    mask = np.asarray(mask.resize(size, Image.Resampling.BILINEAR)) > 0.5
  return image, mask, (top, left, bottom, right)


def _intensity_lut(rng, levels):
  """Maps [0, 1] (quantised to `levels`) through gamma, gain and a background pedestal."""
  gamma, gain = rng.uniform(0.8, 1.25), rng.uniform(0.7, 1.0)
  background = rng.uniform(0.02, 0.15) if rng.uniform() < 0.3 else 0.0
  x = np.linspace(0.0, 1.0, levels)
  y = background + (1.0 - background) * gain * x ** gamma
  return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)


def phantom_slice(seed: int, index: int, positive: bool) -> PhantomSlice:
  """One raw slice at its native canvas size; deterministic in its arguments."""
  if seed < 0 or index < 0:
    raise ValueError(f'seed and index must be >= 0, got seed={seed}, index={index}')
  rng = np.random.default_rng([int(seed), int(index), int(bool(positive))])
  height, width = _canvas_shape(rng)
  head, head_mask, (top, left, bottom, right) = _head(rng, height, width, bool(positive))
  image = np.zeros((height, width), np.float32)
  image[top:bottom, left:right] = head
  mask = np.zeros((height, width), np.uint8)
  mask[top:bottom, left:right] = head_mask
  # Rician-like noise (magnitude of a complex signal); sums of uniforms are
  # close enough to Gaussian and much cheaper to draw.
  sigma = rng.uniform(0.008, 0.035)
  u = rng.random((3, height, width), dtype=np.float32)
  real = image + (u[0] + u[1] - _F32(1.0)) * _F32(sigma * math.sqrt(6.0))
  imag = (u[2] - _F32(0.5)) * _F32(sigma * math.sqrt(12.0))
  image = np.sqrt(real * real + imag * imag)
  _burn_in(rng, image)
  levels = 4096
  lut = _intensity_lut(rng, levels)
  image = lut[np.clip(image * _F32(levels - 1) + _F32(0.5), 0, levels - 1).astype(np.int32)]
  if rng.uniform() < 0.6:  # Br35H stores most grayscale scans as RGB
    image = np.repeat(image[..., None], 3, axis=-1)
  return PhantomSlice(image=image, mask=mask)


def _burn_in(rng, image):
  """Occasional text blocks, frame lines and rulers, as in exported scans."""
  height, width = image.shape
  level = _F32(rng.uniform(0.6, 1.0))
  if rng.uniform() < 0.25:  # a few lines of "text" in a corner
    glyph = max(3, height // 60)
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(3, 10))
    pattern = rng.uniform(size=(rows * 2, cols * 2)) < 0.45
    pattern[1::2] = False  # line spacing
    block = np.kron(pattern, np.ones((glyph, (glyph + 1) // 2), bool))
    h, w = min(block.shape[0], height - 4), min(block.shape[1], width - 4)
    top = 2 if rng.uniform() < 0.5 else height - 2 - h
    left = 2 if rng.uniform() < 0.5 else width - 2 - w
    region = image[top:top + h, left:left + w]
    region[block[:h, :w]] = level
  if rng.uniform() < 0.06:  # a thin frame
    k = int(rng.integers(1, 4))
    image[k, k:-k] = image[-k - 1, k:-k] = level
    image[k:-k, k] = image[k:-k, -k - 1] = level
  if rng.uniform() < 0.05:  # a ruler along the bottom
    y = height - 4
    image[y, width // 4: 3 * width // 4] = level
    image[y - 3:y, width // 4: 3 * width // 4: max(2, width // 40)] = level
