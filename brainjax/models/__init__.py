"""The study's four networks in Flax linen, by name."""
import flax.linen as nn

from brainjax.models.cnn import BrainCNN
from brainjax.models.cvae import BrainCVAE
from brainjax.models.gan import Discriminator, Generator
from brainjax.models.vae import VAE

MODELS = {
    'vae': VAE,
    'generator': Generator,
    'discriminator': Discriminator,
    'cnn': BrainCNN,
    'cvae': BrainCVAE,
}


def get_model(name: str, **kwargs) -> nn.Module:
  """The network called `name`, built with `kwargs` as its fields."""
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; known: {", ".join(sorted(MODELS))}')
  return MODELS[name](**kwargs)
