"""Generative VAE, one model per class: `configs/vae_gen.py:positive` (tumour) or `:negative`.

Modifiers: `smoke` (tiny, seconds), `paper` (the study's full-width network and settings;
meant for a GPU and real Br35H: add --config.data.dataset=br35h --config.data.data_dir=...).
The default is sized for a laptop CPU: a narrower network on the embedded phantom.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, variants=('positive', 'negative'), modifiers=('smoke', 'paper'))
  config = common.base_config('vae_gen', f'vae_gen_{opts.variant}' + '_smoke' * opts.smoke)
  config.label = opts.variant
  config.mode = 'train'  # 'generate': only export samples from the workdir's latest checkpoint
  # CPU default: a quarter of the paper's widths, a smaller latent and a 5x larger rate; on
  # the phantom this gives head-shaped samples with a skull ring in a few hundred steps.
  config.model = ml_collections.ConfigDict(dict(
      latent_dim=64, encoder_widths=(16, 32, 64, 128, 128, 256),
      decoder_widths=(256, 128, 128, 64, 32, 16)))
  config.kl_weight = 1.0
  config.learning_rate = 1e-3
  config.b1, config.b2, config.weight_decay = 0.5, 0.999, 1e-5
  config.batch_size = 32
  config.num_epochs = 25
  config.data.num_per_class = 500
  # dir '' = <workdir>/synthetic
  config.export = ml_collections.ConfigDict(dict(num_samples=1500, seed=0, dir=''))
  if opts.paper:
    config.model = ml_collections.ConfigDict(dict(
        latent_dim=512, encoder_widths=(64, 128, 256, 512, 512, 1024),
        decoder_widths=(1024, 512, 512, 256, 128, 64)))
    config.learning_rate = 2e-4
    config.data.num_per_class = 1500
    config.batch_size = 64
    config.num_epochs = 100
  if opts.smoke:
    common.apply_smoke(config)
    config.model = ml_collections.ConfigDict(dict(
        latent_dim=8, encoder_widths=(4, 4, 8, 8, 8, 8), decoder_widths=(8, 8, 8, 8, 4, 4)))
    config.export.num_samples = 10
  return config
