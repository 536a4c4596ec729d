"""Batches of in-memory arrays: shuffled per epoch for training, padded for evaluation."""
import numpy as np


def steps_per_epoch(num_examples, batch_size):
  """Full training batches per epoch; an empty epoch is a configuration error."""
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(f'batch_size={batch_size} is larger than the {num_examples} training '
                     'examples; lower --config.batch_size (in a study: '
                     '--config.overrides.<task>.batch_size)')
  return steps


def train_batches(arrays, batch_size, seed, epoch, start=0):
  """Yields full batches of `arrays` (a dict of equal-length arrays) in a shuffled order.

  The order depends only on (seed, epoch), so a resumed run sees the batches the
  interrupted one would have seen; `start` skips the batches it already took.
  """
  num = len(next(iter(arrays.values())))
  order = np.random.default_rng([seed, epoch]).permutation(num)
  for step in range(start, steps_per_epoch(num, batch_size)):
    index = np.sort(order[step * batch_size:(step + 1) * batch_size])
    yield {k: v[index] for k, v in arrays.items()}


def eval_batches(arrays, batch_size):
  """Yields every example once in fixed-shape batches; a 'weight' of 0 marks padding."""
  num = len(next(iter(arrays.values())))
  for begin in range(0, num, batch_size):
    index = np.arange(begin, begin + batch_size)
    weight = (index < num).astype(np.float32)
    index = np.minimum(index, num - 1)
    yield {**{k: v[index] for k, v in arrays.items()}, 'weight': weight}
