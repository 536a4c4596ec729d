"""TFDS builder for Br35H :: Brain Tumor Detection 2020 (manual download).

The examples hold the raw file bytes, not decoded pixels: brainjax decodes and
preprocesses them itself (brainjax.data.image_io / preprocess), and this keeps
the builder free of TensorFlow (array_record files, Tensor/Text features).
"""
import os
from typing import Optional

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from brainjax.data import layout


class Br35h(tfds.core.GeneratorBasedBuilder):
  """Br35H brain MRI slices: 'yes' (tumour) and 'no' (healthy), raw file bytes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Raw bytes of every file under yes/ and no/.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download "Br35H :: Brain Tumor Detection 2020" from Kaggle
  (https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection) and
  point the manual directory at the unzipped folder (it must contain yes/ and
  no/, directly or inside one top folder) or at a folder holding the .zip.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    info = self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image_bytes': tfds.features.Tensor(shape=(), dtype=np.object_),
            'label': tfds.features.ClassLabel(names=list(layout.CLASSES)),
            'filename': tfds.features.Text(),
        }),
        supervised_keys=('image_bytes', 'label'),
        homepage='https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection',
    )
    # A builder of an unprepared dataset looks for its info in TFDS' GCS bucket, where Br35H
    # is not; the look left an empty tmp*tfds folder in the system's temp folder each time.
    info.initialize_from_bucket = lambda: None
    return info

  # The names of the files the last preparation left out (they cannot be read): the loader
  # records them beside the prepared copy, whose later readers would not know of them.
  unreadable = ()

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    kind, path = layout.locate_download(os.fspath(dl_manager.manual_dir))
    return {'train': self._generate_examples(kind, path)}

  def _generate_examples(self, kind: str, path: str):
    if kind == 'zip':
      items = layout.iter_zip(path)
    else:
      items = ((name, label, _read(full)) for name, label, full in layout.iter_folder(path))
    count, unreadable = 0, []
    for name, label, data in items:
      if data is None:  # (its own warning names it and why)
        unreadable.append(name)
        continue
      count += 1
      yield name, {'image_bytes': data, 'label': label, 'filename': name}
    self.unreadable = tuple(unreadable)
    if unreadable:
      logging.warning('Skipped %d of %d Br35H files in %s that cannot be read (each named '
                      'above); the prepared dataset leaves them out.', len(unreadable),
                      count + len(unreadable), path)
    if count == 0:
      raise ValueError(f'no files under yes/ or no/ in {path}')


def _read(path: str) -> Optional[bytes]:
  """The file's bytes, or None (logged) for one that cannot be read (e.g. a broken link)."""
  try:
    with layout.open_file(path) as f:
      return f.read()
  except OSError as e:
    logging.warning('%r cannot be read (%s): skipped.', path, e.strerror or e)
    return None
