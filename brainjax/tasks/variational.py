"""The train step both variational autoencoders share (the generative VAE, the BrainCVAE).

Loss per image = reconstruction term (the model's choice, summed over pixels)
                 + kl_weight * KL(q(z|x) || N(0, I)); averaged over the batch.
"""
import jax
import jax.numpy as jnp

from brainjax.train import parallel


def kl_to_standard_normal(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) per example."""
  return -0.5 * jnp.sum(1 + logvar - jnp.square(mean) - jnp.exp(logvar), axis=-1)


def _elbo_terms(reconstruction_loss, output, images, mean, logvar):
  """Per image: (reconstruction_loss(output, images), KL), in float32."""
  f32 = lambda x: x.astype(jnp.float32)
  return reconstruction_loss(f32(output), images), kl_to_standard_normal(f32(mean), f32(logvar))


def negative_elbo(reconstruction_loss, output, images, mean, logvar, kl_weight=1.0):
  """Batch mean of reconstruction_loss(output, images) + kl_weight * KL, and both terms."""
  rec, kl = _elbo_terms(reconstruction_loss, output, images, mean, logvar)
  return jnp.mean(rec + kl_weight * kl), {'reconstruction': jnp.mean(rec), 'kl': jnp.mean(kl)}


def train_step(state, batch, rng, *, model, reconstruction_loss, kl_weight=1.0, axis_name=None):
  """One optimiser step on the negative ELBO; `model(x, noise, train)` -> (output, mean, logvar)."""
  images = batch['image']
  noise = parallel.example_normal(rng, images.shape[0], (model.latent_dim,), axis_name)

  def loss_fn(params):
    (output, mean, logvar), updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, images, noise, train=True,
        mutable=['batch_stats'])
    loss, terms = negative_elbo(reconstruction_loss, output, images, mean, logvar, kl_weight)
    return loss, (terms, updates.get('batch_stats', {}))

  (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.mean_over_devices(grads, axis_name)
  metrics = parallel.mean_over_devices({'loss': loss, **terms}, axis_name)
  return state.apply_gradients(grads, batch_stats), metrics


def eval_loss_sum(model, reconstruction_loss, variables, images, noise, weight):
  """The negative ELBO of `images` in inference mode (for validation), summed with `weight`
  (0 for a fixed-shape batch's padding)."""
  output, mean, logvar = model.apply(variables, images, noise, train=False)
  rec, kl = _elbo_terms(reconstruction_loss, output, images, mean, logvar)
  return jnp.sum((rec + kl) * weight)
