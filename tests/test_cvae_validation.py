"""BrainCVAE's validation loss (it picks the best checkpoint): a mean over the slices."""
import jax.numpy as jnp
import numpy as np

from brainjax.tasks import cvae_cls


class _ConstantModel:
  """Reconstructs every slice as 0.5 with a standard-normal posterior (KL 0), whatever the noise."""
  latent_dim = 3

  def apply(self, variables, images, noise, train):
    del variables, noise, train
    zeros = jnp.zeros((images.shape[0], self.latent_dim))
    return jnp.full_like(images, 0.5), zeros, zeros


def test_validation_loss_is_the_mean_over_slices_whatever_the_batches():
  images = np.zeros((5, 4, 4, 1), np.float32)
  images[:, :2] = np.arange(5, dtype=np.float32)[:, None, None, None] / 4  # unequal losses
  per_slice = ((0.5 - images) ** 2).sum(axis=(1, 2, 3))
  model = _ConstantModel()
  for batch_size in (2, 3, 5, 256):  # batches of 2, 2 and 1 (padded): not a mean of batch means
    got = cvae_cls.validation_loss(model, {}, images, seed=0, batch_size=batch_size)['loss']
    np.testing.assert_allclose(got, per_slice.mean(), rtol=1e-6, err_msg=str(batch_size))
