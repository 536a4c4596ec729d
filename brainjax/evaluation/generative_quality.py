"""How close synthetic slices are to real ones, measured in a feature space.

All functions take plain arrays (features of real and synthetic slices, e.g. the
penultimate layer of a BrainCNN trained on real data) and return Python floats.
Computation is in float64 numpy: the inputs are a few thousand vectors, so exact
answers are cheap and no accelerator is needed.
"""
from typing import Dict

import numpy as np


def _as_features(x, name: str) -> np.ndarray:
  """`x` as a finite float64 (N, D) array, or a one-line ValueError."""
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f'{name} must be (N, D) features, got shape {x.shape}')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} contains NaN or inf')
  return x


def _check_pair(real, fake, min_rows: int):
  real = _as_features(real, 'real_features')
  fake = _as_features(fake, 'fake_features')
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f'feature dimensions differ: real {real.shape[1]}, fake {fake.shape[1]}')
  for name, x in (('real_features', real), ('fake_features', fake)):
    if len(x) < min_rows:
      raise ValueError(f'{name} needs at least {min_rows} rows, got {len(x)}')
  return real, fake


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
  """Square root of a symmetric PSD matrix; round-off negatives clipped to 0."""
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(real_features, fake_features) -> float:
  """Fréchet distance between Gaussians fitted to two feature sets.

  FD = |mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2)), with unbiased
  (ddof=1) covariances. The trace term is computed as the sum of square roots of
  the eigenvalues of the symmetric PSD matrix S_r^(1/2) S_f S_r^(1/2), which has
  the same spectrum as S_r S_f; this never produces imaginary parts and is exact
  for singular covariances (round-off negatives are clipped to 0), so no offset
  is needed.

  Fewer samples than dimensions (N or M <= D) is allowed: the covariance is then
  rank-deficient (rank <= N - 1) and the distance is that between the two
  degenerate Gaussians, well defined but a noisy, upward-biased estimate of the
  population value. Use N, M well above D for numbers worth comparing.

  Args:
    real_features: (N, D), N >= 2.
    fake_features: (M, D), M >= 2.

  Returns:
    The distance (>= 0) as a float.
  """
  real, fake = _check_pair(real_features, fake_features, min_rows=2)
  mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
  # np.cov on a (N, 1) column returns a 0-d array; atleast_2d keeps D = 1 working.
  cov_r = np.atleast_2d(np.cov(real, rowvar=False))
  cov_f = np.atleast_2d(np.cov(fake, rowvar=False))
  root_r = _sqrtm_psd(cov_r)
  middle = root_r @ cov_f @ root_r
  middle = 0.5 * (middle + middle.T)  # exact symmetry for eigvalsh
  trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum()
  fd = np.sum((mu_r - mu_f) ** 2) + np.trace(cov_r) + np.trace(cov_f) - 2.0 * trace_sqrt
  return float(max(fd, 0.0))


def _distance_blocks(queries: np.ndarray, references: np.ndarray, block: int):
  """Yields (start, (b, M) L2 distances) for consecutive blocks of query rows."""
  ref_sq = np.sum(references ** 2, axis=1)
  for start in range(0, len(queries), block):
    q = queries[start:start + block]
    sq = np.sum(q ** 2, axis=1)[:, None] + ref_sq[None, :] - 2.0 * (q @ references.T)
    yield start, np.sqrt(np.clip(sq, 0.0, None))


def _knn_radii(features: np.ndarray, k: int, block: int) -> np.ndarray:
  """Distance from each row to its k-th nearest other row of the same set."""
  radii = np.empty(len(features))
  for start, d in _distance_blocks(features, features, block):
    # Column 0 of the partition is the point itself (distance 0, the minimum);
    # column k is therefore its k-th nearest *other* point, duplicates included.
    radii[start:start + len(d)] = np.partition(d, k, axis=1)[:, k]
  return radii


def _fraction_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray,
                     block: int) -> float:
  """Fraction of `points` within radius of at least one centre (closed balls)."""
  inside = 0
  for _, d in _distance_blocks(points, centres, block):
    inside += int(np.sum(np.any(d <= radii[None, :], axis=1)))
  return inside / len(points)


def knn_precision_recall(real_features, fake_features, k: int = 3,
                         block: int = 1024) -> Dict[str, float]:
  """k-nearest-neighbour manifold precision and recall (Kynkäänniemi et al., 2019).

  Each sample defines a ball reaching its k-th nearest neighbour within its own
  set. Precision is the fraction of fake samples inside the union of the real
  balls (are the fakes realistic?); recall is the fraction of real samples
  inside the union of the fake balls (do the fakes cover the real variety?).
  Distances are L2, computed `block` rows at a time, so memory is
  O(block * max(N, M)) whatever the set sizes.

  Args:
    real_features: (N, D), N > k.
    fake_features: (M, D), M > k.
    k: neighbourhood size (the paper uses 3).
    block: query rows per distance block.

  Returns:
    {'precision': float, 'recall': float}, both in [0, 1].
  """
  if not (isinstance(k, (int, np.integer)) and k >= 1):
    raise ValueError(f'k must be a positive integer, got {k!r}')
  if block < 1:
    raise ValueError(f'block must be >= 1, got {block}')
  real, fake = _check_pair(real_features, fake_features, min_rows=k + 1)
  # Centred: distances come from the |q|^2 + |r|^2 - 2 q.r expansion, whose rounding
  # grows with the norms, so a common offset would blur small gaps.
  centre = real.mean(axis=0)
  real, fake = real - centre, fake - centre
  real_radii = _knn_radii(real, k, block)
  fake_radii = _knn_radii(fake, k, block)
  return {
      'precision': _fraction_inside(fake, real, real_radii, block),
      'recall': _fraction_inside(real, fake, fake_radii, block),
  }


def tumour_visibility(log_odds) -> float:
  """Fraction of synthetic tumour slices a real-data classifier calls positive.

  A generator conditioned on the tumour class can produce plausible brains with
  no visible tumour; a classifier trained only on real slices is an independent
  judge of whether the tumour made it into the picture.

  Args:
    log_odds: (N,) the real-data classifier's tumour log-odds of each synthetic
      positive slice (cnn_cls.predict_log_odds). Positive means log-odds >= 0, the
      classifier's own rule (a float32 probability of 0.5 is also reached by a
      slightly negative log-odds).

  Returns:
    The fraction in [0, 1].
  """
  m = np.asarray(log_odds, dtype=np.float64)
  if m.ndim != 1 or m.size == 0:
    raise ValueError(f'log_odds must be a non-empty (N,) array, got shape {m.shape}')
  if np.isnan(m).any():
    raise ValueError('log_odds must not be NaN')
  return float(np.mean(m >= 0))
