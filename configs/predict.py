"""Applies a trained cnn_cls or cvae_cls run to new scans: `configs/predict.py`.

  python launch.py --config=configs/predict.py --config.model_dir=runs/cnn_cls_real \
      --config.input=<image file, folder (searched recursively) or .zip> --workdir=<output>

The model, its preprocessing and (for a BrainCVAE) the anomaly rules' hyperparameters
are rebuilt from the run's config.json and metrics.json. Writes predictions.csv,
metrics.json (with classification metrics when the input has yes/ and no/ folders) and,
for a BrainCVAE, maps/, regions/ and overlays/ (see brainjax/tasks/predict.py).

`smoke`: an empty model_dir is a tiny `smoke_task` model, trained first
(configs/<smoke_task>.py:real,smoke, on the embedded phantom) into
<workdir>/smoke_model_<smoke_task>; an empty input is data.num_per_class phantom slices per
class written into <workdir>/smoke_input/{yes,no}. With both empty: the whole command end to
end, no data or trained run needed.
"""
from configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, variants=('default',), modifiers=('smoke',))
  config = common.base_config('predict', 'predict' + '_smoke' * opts.smoke)
  config.model_dir = ''  # workdir of a trained cnn_cls or cvae_cls run
  config.input = ''  # an image file, a folder (recursive) or a .zip
  # BrainCVAE runs only: 'selected' = the rule the run picked on validation; 'all' = every
  # rule the run evaluated (the selected one sets predicted_label, regions/ and overlays/); or
  # one rule name,
  # or a comma-separated list (the first one leads): giaem, dbscan, kmeans, global_kmeans.
  config.rules = 'selected'
  # A folder/zip of training images: inputs whose thumbnails correlate above dedup_threshold
  # (common.base_config's) with one of them are skipped.
  config.dedup_against = ''
  # Images per jitted BrainCNN call, whatever their number: 256, the run's own, gives a slice
  # the score it got there (BrainCVAE's maps always come in its run's calls,
  # recon_error.IMAGES_PER_CALL).
  config.batch_size = 256
  config.num_threads = 0  # decode + preprocess threads; 0 = one per usable core, at most 8
  config.write_maps = True  # BrainCVAE: maps/, regions/ and overlays/ per input
  config.smoke = opts.smoke  # empty model_dir / input: train a tiny run / draw phantom slices
  config.smoke_task = 'cnn_cls'  # what smoke mode trains: 'cnn_cls' or 'cvae_cls'
  # The run's own config sets the preprocessing and data; config.data only shapes the smoke
  # inputs (its other fields would be overrides taken without effect).
  del config.data.dataset, config.data.data_dir, config.data.image_size, config.data.margin
  if opts.smoke:
    common.apply_smoke(config)
    config.data.num_per_class = 6
    config.batch_size = 8
  # Training settings: predict trains nothing (smoke mode's model uses its own task's config).
  del (config.seed, config.split, config.num_epochs, config.learning_rate, config.half_precision,
       config.log_every_steps, config.checkpoint_every_secs, config.keep_checkpoints)
  return config
