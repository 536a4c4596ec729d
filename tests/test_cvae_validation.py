"""BrainCVAE's validation loss (it picks the best checkpoint): a mean over the slices, of
the real healthy validation slices."""
import math

import jax.numpy as jnp
import numpy as np

from brainjax.data.examples import NEGATIVE
from brainjax.tasks import cvae_cls
from brainjax.tasks import datasets
from configs import cvae_cls as cvae_config


# The stub's posterior, N(MEAN, exp(LOGVAR)), the same for every slice. Its KL to N(0, I) in
# closed form, 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar) = 0.5 * (0.36 + 0.64 + (2 - 1 - ln 2))
# = 1 - ln(2) / 2: non-zero, so a loss without its KL term is seen.
MEAN, LOGVAR = (0.6, -0.8, 0.0), (0.0, 0.0, math.log(2.0))
KL = 1 - math.log(2.0) / 2


class _ConstantModel:
  """Reconstructs every slice as 0.5 with the posterior N(MEAN, exp(LOGVAR)), whatever the noise."""
  latent_dim = 3

  def apply(self, variables, images, noise, train):
    del variables, noise, train
    shape = (images.shape[0], self.latent_dim)
    return (jnp.full_like(images, 0.5), jnp.broadcast_to(jnp.array(MEAN), shape),
            jnp.broadcast_to(jnp.array(LOGVAR), shape))


def test_validation_loss_is_the_mean_over_slices_whatever_the_batches():
  images = np.zeros((5, 4, 4, 1), np.float32)
  images[:, :2] = np.arange(5, dtype=np.float32)[:, None, None, None] / 4  # unequal losses
  per_slice = ((0.5 - images) ** 2).sum(axis=(1, 2, 3)) + KL  # the negative ELBO of each
  model = _ConstantModel()
  for batch_size in (2, 3, 5, 256):  # batches of 2, 2 and 1 (padded): not a mean of batch means
    got = cvae_cls.validation_loss(model, {}, images, seed=0, batch_size=batch_size)['loss']
    np.testing.assert_allclose(got, per_slice.mean(), rtol=1e-6, err_msg=str(batch_size))


def test_validation_noise_differs_by_batch_and_by_seed(monkeypatch):
  noises = {}

  def record(model, variables, images, noise, weight):
    del model, variables, images, weight
    noises.setdefault(seed, []).append(np.asarray(noise))
    return jnp.float32(0)

  monkeypatch.setattr(cvae_cls, '_batch_loss_sum', record)
  images = np.zeros((4, 4, 4, 1), np.float32)
  for seed in (0, 1):
    cvae_cls.validation_loss(_ConstantModel(), {}, images, seed=seed, batch_size=2)
  batches = noises[0] + noises[1]  # two batches of each seed
  assert len(batches) == 4
  for i in range(4):
    for j in range(i):
      assert not np.allclose(batches[i], batches[j]), (i, j)


def test_checkpoints_are_picked_on_the_healthy_validation_slices(validated_on):
  # The CVAE models healthy slices: tumour slices in its validation loss would favour a model
  # that reconstructs tumours too (their errors are what the anomaly rules look for), and
  # test slices would pick the checkpoint that is then tested on them.
  config = cvae_config.get_config('real,smoke')
  validated, eval_ids = validated_on(cvae_cls, 'validation_loss', config)
  # Which slices it was given, by their pixels: the val set the run recorded, healthy only.
  examples = datasets.real_source(config).examples  # (all the real slices, from the cache)
  id_of = {image.tobytes(): str(i) for image, i in zip(examples.images, examples.ids)}
  assert len(id_of) == len(examples)  # (no two alike: each image names one slice)
  label_of = dict(zip(map(str, examples.ids), examples.labels))
  val_ids = eval_ids['val']
  healthy_val = [i for i in val_ids if label_of[i] == NEGATIVE]
  assert 0 < len(healthy_val) < len(val_ids)  # (the val set holds both classes)
  assert sorted(id_of.get(image.tobytes(), '?') for image in np.asarray(validated)) == healthy_val
