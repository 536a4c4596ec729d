"""GAN, one per class: `configs/gan_gen.py:positive` (tumour) or `:negative` (healthy).

Modifiers: `smoke` (tiny, seconds), `paper` (the study's data size, batch and epochs; the
network is the study's either way; meant for a GPU and real Br35H: add
--config.data.dataset=br35h --config.data.data_dir=...).
"""
import ml_collections

from configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, variants=('positive', 'negative'), modifiers=('smoke', 'paper'))
  config = common.base_config('gan_gen', f'gan_gen_{opts.variant}' + '_smoke' * opts.smoke)
  config.label = opts.variant
  config.mode = 'train'  # 'generate': only export samples from the workdir's latest checkpoint
  # The dense layer makes an 8x8 map of widths[0] channels; each further width is an
  # (upsample, conv, BatchNorm, ReLU) block; a last upsample + conv gives the 128x128 image.
  config.generator = ml_collections.ConfigDict(dict(latent_dim=100, widths=(128, 128, 64, 32)))
  config.discriminator = ml_collections.ConfigDict(dict(widths=(64, 128, 256, 512)))
  config.learning_rate = 2e-4
  config.b1, config.b2 = 0.5, 0.999
  config.batch_size = 32
  config.num_epochs = 30
  config.data.num_per_class = 500
  config.export = ml_collections.ConfigDict(dict(num_samples=1500, seed=0, dir=''))
  if opts.paper:
    config.data.num_per_class = 1500
    config.batch_size = 64
    config.num_epochs = 200
  if opts.smoke:
    common.apply_smoke(config)
    config.generator = ml_collections.ConfigDict(dict(latent_dim=8, widths=(8, 8, 4, 4)))
    config.discriminator = ml_collections.ConfigDict(dict(widths=(4, 4, 8, 8)))
    config.export.num_samples = 10
  return config
