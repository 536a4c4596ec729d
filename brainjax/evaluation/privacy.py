"""Privacy audit of synthetic data by distance to closest record (DCR).

A generator that memorises its training set emits near-copies of training
slices. We compare how close each synthetic slice comes to the training set
with how close genuinely new real slices (a held-out set never seen by the
generator) come to it. Inputs are arrays of any shape (N, ...), flattened to
(N, D): raw pixels for pixel L2, or CNN features for a perceptual distance.
"""
from typing import Any, Dict, Tuple

import numpy as np
from matplotlib.figure import Figure

from brainjax.train import reporting


def _as_rows(x, name: str) -> np.ndarray:
  """`x` as a finite (N, D) array (rows flattened), or a one-line ValueError."""
  x = np.asarray(x)
  if x.ndim < 1 or len(x) == 0:
    raise ValueError(f'{name} must be a non-empty (N, ...) array, got shape {x.shape}')
  x = x.reshape(len(x), -1)
  if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
    raise ValueError(f'{name} must be numeric with no NaN or inf')
  return x


def distance_to_closest_record(queries, references, block: int = 1024
                               ) -> Tuple[np.ndarray, np.ndarray]:
  """Exact L2 distance from each query to its nearest reference, and its index.

  Both sets are processed `block` rows at a time (in float64), so memory is
  O(block * (block + D)) beyond the inputs. Candidates come from the
  |q|^2 + |r|^2 - 2 q.r expansion, on rows centred on the references' mean (a
  common offset would otherwise swamp small gaps): every reference whose expanded
  distance is within the expansion's rounding bound of the smallest. Their distances
  are then computed directly, so the nearest is found, and its distance carries no
  cancellation error, even among near-copies (an exact copy is at 0, not beaten by a
  near-copy the rounding put ahead). Ties go to the lowest reference index.

  Args:
    queries: (N, ...) array, flattened to (N, D).
    references: (M, ...) array, flattened to (M, D).
    block: rows per block of either set.

  Returns:
    distances: (N,) float64. indices: (N,) int64 into references.
  """
  q_all = _as_rows(queries, 'queries')
  r_all = _as_rows(references, 'references')
  if q_all.shape[1] != r_all.shape[1]:
    raise ValueError(
        f'feature dimensions differ: queries {q_all.shape[1]}, references {r_all.shape[1]}')
  if block < 1:
    raise ValueError(f'block must be >= 1, got {block}')
  n, m = len(q_all), len(r_all)
  centre = r_all.mean(axis=0, dtype=np.float64)

  def centred(x, start):
    return x[start:start + block].astype(np.float64) - centre

  r_sq_all = np.concatenate([np.sum(centred(r_all, s) ** 2, axis=1) for s in range(0, m, block)])
  max_r_sq = float(r_sq_all.max())
  # |error| of one expanded squared distance <= 2 D eps (|q|^2 + |r|^2) (the sums and the dot
  # product in float64); a candidate may sit two such errors above the smallest.
  rounding = 4 * q_all.shape[1] * np.finfo(np.float64).eps
  best_expanded = np.full(n, np.inf)
  best_sq = np.full(n, np.inf)  # the direct squared distance to best_idx
  best_idx = np.zeros(n, dtype=np.int64)
  for r_start in range(0, m, block):
    r = centred(r_all, r_start)
    r_sq = r_sq_all[r_start:r_start + len(r)]
    for q_start in range(0, n, block):
      q = centred(q_all, q_start)
      q_sq = np.sum(q ** 2, axis=1)
      expanded = q_sq[:, None] + r_sq[None, :] - 2.0 * (q @ r.T)
      rows = slice(q_start, q_start + len(q))
      best_expanded[rows] = np.minimum(best_expanded[rows], expanded.min(axis=1))
      bound = best_expanded[rows] + rounding * (q_sq + max_r_sq)
      qi, rj = np.nonzero(expanded <= bound[:, None])  # by query, then reference index
      for p in range(0, qi.size, block):  # direct distances, `block` pairs at a time
        i, j = qi[p:p + block] + q_start, rj[p:p + block] + r_start
        diff = q_all[i].astype(np.float64) - r_all[j].astype(np.float64)
        sq = np.sum(diff ** 2, axis=1)
        order = np.lexsort((j, sq, i))  # each query's nearest first, lowest index on ties
        first = order[np.r_[True, i[order][1:] != i[order][:-1]]]
        i, j, sq = i[first], j[first], sq[first]
        better = sq < best_sq[i]  # strict: earlier (lower) indices win ties
        best_sq[i[better]], best_idx[i[better]] = sq[better], j[better]
  return np.sqrt(best_sq), best_idx


def privacy_audit(synthetic, train, holdout, num_worst: int = 8,
                  quantile: float = 0.05, block: int = 1024) -> Dict[str, Any]:
  """DCR of synthetic slices to the training set against a held-out baseline.

  The holdout DCRs (real slices the generator never saw, to the training set)
  say how close a genuinely new slice typically lands. The memorisation rate is
  the fraction of synthetic slices at most as far from the training set as the
  `quantile` (5th percentile) of holdout DCRs: about `nominal_rate` for a generator
  independent of its training data, near 1 for one that copies it. The quantile is
  the unbiased one for this (numpy's 'weibull': rank quantile * (H + 1) of H holdout
  DCRs, since a new draw falls below the r-th of H with probability r / (H + 1));
  numpy's default interpolation would expect ((H - 1) q + 1) / (H + 1) of a
  generator that copies nothing, 6.8% instead of 5% for H = 50. A holdout of fewer
  than 1 / quantile - 1 slices cannot resolve the quantile: its threshold is the
  smallest holdout DCR and `nominal_rate` 1 / (H + 1). Meaningful
  only when holdout and train come from the same distribution and split (use the
  grouped split, or near-duplicates across train/holdout lower the baseline).

  Args:
    synthetic: (S, ...) synthetic samples (pixels or features).
    train: (T, ...) the generator's training samples, same representation.
    holdout: (H, ...) real samples not used to train the generator.
    num_worst: how many closest synthetic/train pairs to report.
    quantile: the holdout DCR quantile that defines "suspiciously close".
    block: rows per distance block.

  Returns:
    A dict with floats 'median_synthetic_dcr', 'median_holdout_dcr',
    'threshold' (the holdout quantile), 'memorisation_rate',
    'nominal_rate' (the rate expected of a generator that copies nothing: quantile,
    or 1 / (H + 1) for a holdout too small for it); arrays 'synthetic_dcr' (S,),
    'synthetic_nearest' (S,) train indices; and
    'worst_pairs' (min(num_worst, S), 2) int64 rows of (synthetic index, train
    index), closest first, with their 'worst_distances'.
  """
  if not 0.0 < quantile < 1.0:
    raise ValueError(f'quantile must be in (0, 1), got {quantile}')
  if num_worst < 0:
    raise ValueError(f'num_worst must be >= 0, got {num_worst}')
  dims = {name: _as_rows(x, name).shape[1]
          for name, x in (('synthetic', synthetic), ('train', train), ('holdout', holdout))}
  if len(set(dims.values())) != 1:
    raise ValueError(f'feature dimensions differ: {dims}')
  syn_dcr, syn_nearest = distance_to_closest_record(synthetic, train, block)
  hold_dcr, _ = distance_to_closest_record(holdout, train, block)
  threshold = float(np.quantile(hold_dcr, quantile, method='weibull'))
  rank = min(max(quantile * (hold_dcr.size + 1), 1.0), hold_dcr.size)  # (what weibull reads)
  worst = np.argsort(syn_dcr, kind='stable')[:num_worst]
  return {
      'median_synthetic_dcr': float(np.median(syn_dcr)),
      'median_holdout_dcr': float(np.median(hold_dcr)),
      'threshold': threshold,
      # <=, not <: if 5% of the holdout are exact copies of training slices, the
      # threshold is 0, and a generator that emits copies must still count as memorising.
      'memorisation_rate': float(np.mean(syn_dcr <= threshold)),
      'nominal_rate': rank / (hold_dcr.size + 1),
      'synthetic_dcr': syn_dcr,
      'synthetic_nearest': syn_nearest,
      'worst_pairs': np.stack([worst, syn_nearest[worst]], axis=1).astype(np.int64),
      'worst_distances': syn_dcr[worst],
  }


def nearest_record_rows(synthetic_ids, train_ids, audits: Dict[str, Dict[str, Any]]):
  """One row per synthetic slice: its nearest training slice in each space of `audits`
  ({space: privacy_audit(...)} on the same synthetic and training slices), the distance,
  and whether it is flagged (as close as the holdout quantile: what memorisation_rate counts),
  so that flagged slices can be looked at, or left out, before synthetic data is shared."""
  rows = [{'synthetic': str(name)} for name in synthetic_ids]
  for space, audit in audits.items():
    nearest, dcr = audit['synthetic_nearest'], audit['synthetic_dcr']
    if len(dcr) != len(rows):
      raise ValueError(f'{space} audit has {len(dcr)} synthetic slices, ids {len(rows)}')
    flagged = dcr <= audit['threshold']  # (as memorisation_rate counts them)
    for row, t, d, f in zip(rows, nearest, dcr, flagged):
      row.update({f'{space}_nearest_training': str(train_ids[t]),
                  f'{space}_distance': float(d), f'{space}_flagged': int(f)})
  return rows


def _as_picture(image: np.ndarray) -> np.ndarray:
  """(H, W) or (H, W, 1) -> (H, W) for imshow."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim != 2:
    raise ValueError(
        f'images must be (N, H, W) or (N, H, W, 1), got a slice of shape {image.shape}')
  return image


def worst_pairs_figure(synthetic_images, train_images, pairs, path,
                       distances=None) -> None:
  """Writes a PNG: one column per pair, synthetic on top, nearest train below.

  Args:
    synthetic_images: (S, H, W[, 1]) in [0, 1].
    train_images: (T, H, W[, 1]) in [0, 1].
    pairs: (K, 2) rows of (synthetic index, train index), e.g. 'worst_pairs'
      from `privacy_audit`.
    path: output file (PNG).
    distances: optional (K,) values printed above each column.
  """
  pairs = np.asarray(pairs)
  if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
    raise ValueError(f'pairs must be a non-empty (K, 2) array, got shape {pairs.shape}')
  if not np.issubdtype(pairs.dtype, np.integer):
    raise ValueError(f'pairs must hold integer indices, got dtype {pairs.dtype}')
  n_syn, n_train = len(synthetic_images), len(train_images)
  if (pairs < 0).any() or (pairs[:, 0] >= n_syn).any() or (pairs[:, 1] >= n_train).any():
    raise ValueError(f'pair indices out of range for {n_syn} synthetic and {n_train} train images')
  if distances is not None and len(distances) != len(pairs):
    raise ValueError(f'distances has {len(distances)} entries for {len(pairs)} pairs')
  k = len(pairs)
  # Figure without pyplot: no global backend state, Agg canvas for savefig.
  fig = Figure(figsize=(1.6 * k, 3.4))
  axes = fig.subplots(2, k, squeeze=False)
  for col, (s, t) in enumerate(pairs):
    for row, (image, label) in enumerate(((synthetic_images[s], f'syn {s}'),
                                          (train_images[t], f'train {t}'))):
      ax = axes[row, col]
      ax.imshow(_as_picture(image), cmap='gray', vmin=0.0, vmax=1.0)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_xlabel(label, fontsize=7)
    if distances is not None:
      axes[0, col].set_title(f'd={float(distances[col]):.3g}', fontsize=8)
  fig.tight_layout()
  reporting.save_figure(fig, path, dpi=100)
