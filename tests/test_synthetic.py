"""Synthetic export format: write, read back, atomicity, consistency checks."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from brainjax.data import synthetic
from brainjax.data.examples import NEGATIVE, POSITIVE


def _images(n, size=16, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, size, size, 1)).astype(np.float32)


def test_round_trip_with_provenance(tmp_path):
  out = str(tmp_path / 'export')
  yes, no = _images(3), _images(2, seed=1)
  synthetic.write_synthetic(out, yes, POSITIVE, {'generator': 'vae', 'seed': 1})
  synthetic.write_synthetic(out, no, NEGATIVE, {'generator': 'gan', 'seed': 2})
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  assert manifest['format'] == 1
  digest = manifest['classes']['yes'].pop('pixels_sha256')
  assert manifest['classes']['yes'] == {'generator': 'vae', 'seed': 1, 'count': 3}
  assert manifest['classes']['no']['count'] == 2
  examples = synthetic.read_synthetic(out)
  # The digest is of the 8-bit images as written (what a classifier reads back).
  written = np.round(examples.images[2:, ..., 0] * 255).astype(np.uint8)
  assert digest == synthetic.pixels_digest(written)
  assert digest != synthetic.pixels_digest(written[:2])
  assert list(examples.ids) == ['no/00000.png', 'no/00001.png', 'yes/00000.png', 'yes/00001.png',
                                'yes/00002.png']
  np.testing.assert_array_equal(examples.labels, [0, 0, 1, 1, 1])
  assert examples.images.shape == (5, 16, 16, 1) and examples.images.dtype == np.float32
  # 8-bit PNG: within half a grey level, and not re-cropped or resized.
  np.testing.assert_allclose(examples.images[2:], yes, atol=0.5 / 255 + 1e-6)
  assert not [f for f in os.listdir(out) if f.startswith('.')]  # no staging leftovers


def test_macos_metadata_in_an_export_is_not_an_image(tmp_path):
  out = str(tmp_path / 'export')
  synthetic.write_synthetic(out, _images(2), POSITIVE, {})
  with open(os.path.join(out, 'yes', '._00000.png'), 'wb') as f:
    f.write(b'\x00\x05\x16\x07 Mac OS X')
  assert list(synthetic.read_synthetic(out).ids) == ['yes/00000.png', 'yes/00001.png']


def test_a_damaged_image_in_an_export_is_named(tmp_path):
  # (it was "error: image file is truncated", naming neither the file nor the export)
  out = str(tmp_path / 'export')
  synthetic.write_synthetic(out, _images(2), POSITIVE, {})
  path = os.path.join(out, 'yes', '00001.png')
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(ValueError, match=r'yes/00001.png cannot be read \(.*truncated.*\): export'):
    synthetic.read_synthetic(out)


def test_an_export_whose_images_were_changed_since_is_refused(tmp_path):
  # (a 16-bit copy of the same picture read as an all-white slice; an edited one trained as is)
  out = str(tmp_path / 'export')
  synthetic.write_synthetic(out, _images(3), POSITIVE, {})
  path = os.path.join(out, 'yes', '00001.png')
  original = np.asarray(Image.open(path))
  Image.fromarray(original.astype(np.uint16) * 257).save(path)  # same picture, 16 bits
  with pytest.raises(ValueError, match=r'yes/00001.png is a I;16 image, not the 8-bit grayscale'):
    synthetic.read_synthetic(out)
  edited = original.copy()
  edited[0, 0] ^= 1
  Image.fromarray(edited).save(path)
  with pytest.raises(ValueError, match="holds other images than the export wrote .*pixels_sha256"):
    synthetic.read_synthetic(out)
  Image.fromarray(original).save(path)
  assert len(synthetic.read_synthetic(out)) == 3


def test_an_image_of_another_size_names_the_image_it_differs_from(tmp_path):
  out = str(tmp_path / 'export')
  synthetic.write_synthetic(out, _images(3), POSITIVE, {})
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(out, 'yes', '00000.png'))
  with pytest.raises(ValueError, match=r'yes/00001.png is \(16, 16\), 00000.png is \(8, 8\)'):
    synthetic.read_synthetic(out)


def test_other_files_in_an_export_s_class_folder_are_named_in_a_log_line(tmp_path, monkeypatch):
  out = str(tmp_path / 'export')
  synthetic.write_synthetic(out, _images(2), POSITIVE, {})
  open(os.path.join(out, 'yes', 'notes.txt'), 'w').close()
  infos = []
  monkeypatch.setattr(synthetic.logging, 'info', lambda msg, *args: infos.append(msg % args))
  assert len(synthetic.read_synthetic(out)) == 2
  assert infos == [f'{os.path.join(out, "yes")}: not reading 1 files that are not PNG images: '
                   'notes.txt']


def test_one_export_named_twice_or_exports_of_another_size_are_refused(tmp_path, monkeypatch):
  from configs import cnn_cls
  from brainjax.tasks import datasets
  first, second = str(tmp_path / 'a'), str(tmp_path / 'b')
  for out, size in ((first, 16), (second, 8)):
    for label in (POSITIVE, NEGATIVE):
      synthetic.write_synthetic(out, _images(2, size), label, {})
  config = cnn_cls.get_config('synthetic,smoke')
  config.data.image_size = 16
  config.synthetic_dirs = f'{first},{first}/'
  with pytest.raises(ValueError, match=f'names one export twice \\({first} and {first}/\\)'):
    datasets.check_training_data(config)
  os.symlink(first, tmp_path / 'p')  # (a one-letter name: Python keeps one object of it)
  config.synthetic_dirs = f'{tmp_path}/p,{tmp_path}/p'
  with pytest.raises(ValueError, match='names one export twice'):
    datasets.check_training_data(config)
  monkeypatch.chdir(tmp_path)
  config.synthetic_dirs = 'p,p'
  with pytest.raises(ValueError, match=r'names one export twice \(p and p\)'):
    datasets.check_training_data(config)
  config.synthetic_dirs = f'{first},{second}'  # (was numpy's concatenate error, naming neither)
  with pytest.raises(ValueError, match=f'{second} holds 8x8 slices, this run reads 16x16'):
    datasets.synthetic_examples(config)


def test_an_export_whose_files_were_renamed_is_refused(tmp_path):
  out = str(tmp_path / 'export')
  synthetic.write_synthetic(out, _images(2), POSITIVE, {})
  os.rename(os.path.join(out, 'yes', '00001.png'), os.path.join(out, 'yes', 'zz_other.png'))
  with pytest.raises(ValueError, match='holds 2 images named'):
    synthetic.read_synthetic(out)


def test_rewriting_a_class_replaces_it(tmp_path):
  out = str(tmp_path)
  synthetic.write_synthetic(out, _images(4), POSITIVE, {'run': 'a'})
  synthetic.write_synthetic(out, _images(2), POSITIVE, {'run': 'b'})
  examples = synthetic.read_synthetic(out)
  assert len(examples) == 2
  entry = json.load(open(tmp_path / 'manifest.json'))['classes']['yes']
  assert {k: entry[k] for k in ('run', 'count')} == {'run': 'b', 'count': 2}


def test_missing_or_inconsistent_manifest(tmp_path):
  with pytest.raises(ValueError, match='manifest.json is missing'):
    synthetic.read_synthetic(str(tmp_path))
  synthetic.write_synthetic(str(tmp_path), _images(3), POSITIVE, {})
  os.remove(tmp_path / 'yes' / '00001.png')
  with pytest.raises(ValueError, match='manifest says 3'):
    synthetic.read_synthetic(str(tmp_path))
  (tmp_path / 'manifest.json').write_text('{"format": 7}')
  with pytest.raises(ValueError, match='format-1'):
    synthetic.read_synthetic(str(tmp_path))


def test_interrupted_export_leaves_no_half_folder(tmp_path, monkeypatch):
  out = str(tmp_path)
  synthetic.write_synthetic(out, _images(2), NEGATIVE, {'run': 'kept'})
  calls = {'n': 0}
  real_save = synthetic.Image.Image.save

  def failing_save(self, *args, **kwargs):
    calls['n'] += 1
    if calls['n'] == 3:
      raise KeyboardInterrupt
    return real_save(self, *args, **kwargs)

  monkeypatch.setattr(synthetic.Image.Image, 'save', failing_save)
  with pytest.raises(KeyboardInterrupt):
    synthetic.write_synthetic(out, _images(5), POSITIVE, {'run': 'lost'})
  monkeypatch.undo()
  assert sorted(os.listdir(out)) == ['manifest.json', 'no']
  examples = synthetic.read_synthetic(out)
  assert len(examples) == 2 and set(examples.labels) == {NEGATIVE}


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match='N, H, W, 1'):
    synthetic.write_synthetic(str(tmp_path), np.zeros((2, 8, 8)), POSITIVE, {})
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    synthetic.write_synthetic(str(tmp_path), _images(1) + 2, POSITIVE, {})
  with pytest.raises(ValueError, match='label'):
    synthetic.write_synthetic(str(tmp_path), _images(1), 5, {})
  with pytest.raises(ValueError, match='JSON'):
    synthetic.write_synthetic(str(tmp_path), _images(1), POSITIVE, {'x': object()})


def test_a_folder_that_is_not_an_export_is_never_written_into(tmp_path):
  (tmp_path / 'yes').mkdir()
  (tmp_path / 'yes' / 'patient_0.jpg').write_bytes(b'a scan')
  with pytest.raises(ValueError, match='not a synthetic export'):
    synthetic.write_synthetic(str(tmp_path), _images(2), POSITIVE, {})
  assert sorted(p.name for p in tmp_path.rglob('*')) == ['patient_0.jpg', 'yes']
  # An empty folder (OS metadata aside) becomes an export, and a class placed there by an
  # export interrupted before it updated the manifest is redone in place.
  out = tmp_path / 'new'
  out.mkdir()
  (out / '.DS_Store').write_bytes(b'')
  synthetic.write_synthetic(str(out), _images(2), POSITIVE, {})
  (out / 'no').mkdir()
  (out / 'no' / '00000.png').write_bytes(b'unrecorded')
  synthetic.write_synthetic(str(out), _images(3), NEGATIVE, {})
  assert len(synthetic.read_synthetic(str(out))) == 5


def test_training_on_an_export_without_a_needed_class_is_a_clear_error(tmp_path):
  from configs import cnn_cls
  from brainjax.tasks import datasets
  synthetic.write_synthetic(str(tmp_path), _images(2), POSITIVE, {})  # tumour slices only
  config = cnn_cls.get_config('synthetic,smoke')
  config.synthetic_dirs, config.data.image_size = str(tmp_path), 16
  real = synthetic.read_synthetic(str(tmp_path))  # (stands in for the real training slices)
  with pytest.raises(ValueError, match='hold no negative slices'):
    datasets.training_examples(config, real)  # BrainCNN needs both classes
  with pytest.raises(ValueError, match='hold no negative slices'):
    datasets.training_examples(config, real, NEGATIVE)  # the CVAE healthy ones
  assert len(datasets.training_examples(config, real, POSITIVE)) == 2
  config.data.image_size = 32  # not a shape error deep in the model
  with pytest.raises(ValueError, match='holds 16x16 slices, this run reads 32x32'):
    datasets.training_examples(config, real, POSITIVE)
  # With both classes exported, BrainCVAE's training slices are the healthy ones alone.
  config.data.image_size = 16
  synthetic.write_synthetic(str(tmp_path), _images(3, seed=1), NEGATIVE, {})
  healthy = datasets.training_examples(config, real, NEGATIVE)
  assert len(healthy) == 3 and (healthy.labels == NEGATIVE).all()
  config.train_data = 'mixed'  # real tumour slices too: not the CVAE's
  assert len(datasets.training_examples(config, real, NEGATIVE)) == 3
  assert len(datasets.training_examples(config, real)) == 2 + 5


def test_a_class_being_replaced_is_never_read_under_the_old_provenance(tmp_path, monkeypatch):
  out = str(tmp_path)
  synthetic.write_synthetic(out, _images(3), POSITIVE, {'run': 'a'})
  real_replace = os.replace

  def killed_after_the_swap(src, dst):
    if dst.endswith('manifest.json') and '"b"' in open(src).read():
      raise KeyboardInterrupt  # the new images are in place, their manifest entry is not
    return real_replace(src, dst)

  monkeypatch.setattr(os, 'replace', killed_after_the_swap)
  with pytest.raises(KeyboardInterrupt):
    synthetic.write_synthetic(out, _images(3, seed=1), POSITIVE, {'run': 'b'})
  monkeypatch.undo()
  with pytest.raises(ValueError, match='does not list it'):
    synthetic.read_synthetic(out)
  synthetic.write_synthetic(out, _images(3, seed=1), POSITIVE, {'run': 'b'})  # redone
  assert len(synthetic.read_synthetic(out)) == 3


@pytest.mark.parametrize('new_count', [3, 2])  # the same names, or fewer of them
def test_an_export_replacing_a_class_while_it_is_read_is_an_error(new_count, tmp_path,
                                                                  monkeypatch):
  out = str(tmp_path)
  synthetic.write_synthetic(out, _images(3), POSITIVE, {'run': 'a'})
  real_open = synthetic.Image.open
  def open_during_an_export(path, *args):
    if path.endswith('00000.png'):  # another process re-exports after the first image
      synthetic.write_synthetic(out, _images(new_count, seed=1), POSITIVE, {'run': 'b'})
    return real_open(path, *args)
  monkeypatch.setattr(synthetic.Image, 'open', open_during_an_export)
  with pytest.raises(ValueError, match='replaced while it was read'):
    synthetic.read_synthetic(out)


def test_names_widen_past_99999_and_sort_in_their_order():
  assert synthetic._file_names(3) == ['00000.png', '00001.png', '00002.png']
  names = synthetic._file_names(100001)  # '100000.png' would sort before '10001.png'
  assert names[0] == '000000.png' and names[-1] == '100000.png' and sorted(names) == names


def test_an_export_is_readable_by_others_under_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    synthetic.write_synthetic(str(tmp_path), _images(2), POSITIVE, {})
  finally:
    os.umask(old)
  assert (tmp_path / 'manifest.json').stat().st_mode & 0o777 == 0o644
  assert (tmp_path / 'yes').stat().st_mode & 0o777 == 0o755


def test_an_export_from_a_generator_of_another_split_is_refused(tmp_path):
  # A generator trained on seed 0's split saw slices that seed 1's classifier tests on.
  from configs import cnn_cls, vae_gen
  from brainjax.tasks import datasets
  generator = vae_gen.get_config('positive,smoke')
  for label in (POSITIVE, NEGATIVE):
    synthetic.write_synthetic(str(tmp_path), _images(2, generator.data.image_size), label,
                              {'split_key': datasets.split_key(generator)})
  config = cnn_cls.get_config('synthetic,smoke')
  config.synthetic_dirs = str(tmp_path)
  assert datasets.check_training_data(config) == [str(tmp_path)]
  assert len(datasets.synthetic_examples(config)) == 4
  config.seed = 1
  with pytest.raises(ValueError, match=r'another split .*seed: 0 -> 1'):
    datasets.check_training_data(config)
  config.seed, config.split = 0, 'grouped'
  with pytest.raises(ValueError, match=r"another split .*split: 'random' -> 'grouped'"):
    datasets.check_training_data(config)
  # The grouped split's groups depend on the threshold that links two slices.
  generator.split = config.split = 'grouped'
  generator.dedup_threshold, config.dedup_threshold = 0.95, 0.80
  for label in (POSITIVE, NEGATIVE):
    synthetic.write_synthetic(str(tmp_path), _images(2), label,
                              {'split_key': datasets.split_key(generator)})
  with pytest.raises(ValueError, match=r'another split .*dedup_threshold: 0.95 -> 0.8'):
    datasets.check_training_data(config)


def test_an_export_from_a_generator_of_other_slices_in_the_data_is_refused(tmp_path):
  # Files added to or removed from the data folder change the split under the same settings:
  # the generator may have trained on slices that are now this run's test slices.
  from configs import cnn_cls, vae_gen
  from brainjax.data import sources
  from brainjax.data.examples import Examples
  from brainjax.tasks import datasets

  def source(n):  # a real source of n files
    return sources.Source(Examples(images=_images(n), labels=np.arange(n) % 2,
                                   ids=np.array([f'{i}.png' for i in range(n)])), None)

  generator = vae_gen.get_config('positive,smoke')
  out, older = str(tmp_path / 'export'), str(tmp_path / 'older')
  for label in (POSITIVE, NEGATIVE):
    synthetic.write_synthetic(out, _images(2), label,
                              {'split_key': datasets.split_key(generator, source(4))})
    synthetic.write_synthetic(older, _images(2), label,  # recording the settings alone
                              {'split_key': datasets.split_key(generator)})
  config = cnn_cls.get_config('synthetic,smoke')
  config.synthetic_dirs = out
  assert datasets.check_training_data(config, source(4)) == [out]
  with pytest.raises(ValueError, match=r'export/(yes|no) comes from a generator trained when '
                     r'the data held other slices \(files added to or removed from it since\)'):
    datasets.check_training_data(config, source(5))
  assert datasets.check_training_data(config) == [out]  # launch.py's check: the settings
  config.synthetic_dirs = older  # (cannot be checked: a warning)
  assert datasets.check_training_data(config, source(5)) == [older]


def test_a_grouped_export_from_before_a_file_was_replaced_is_refused(tmp_path):
  # A file replaced under its name keeps the ids, but can change which slices are
  # near-duplicates, and with them every part of the grouped split.
  from configs import cnn_cls, vae_gen
  from brainjax.data import sources
  from brainjax.data.examples import Examples
  from brainjax.tasks import datasets

  def source(images):
    n = len(images)
    return sources.Source(Examples(images=images, labels=np.arange(n) % 2,
                                   ids=np.array([f'{i}.png' for i in range(n)])),
                          images[..., 0])  # (the raw files' thumbnails: the same view here)
  images = _images(8, size=32)
  images[3] = images[1]  # a near-duplicate pair
  generator = vae_gen.get_config('positive,smoke')
  generator.split = 'grouped'
  out, older = str(tmp_path / 'export'), str(tmp_path / 'older')
  key = datasets.split_key(generator, source(images))
  assert 'groups' in key and 'groups' not in datasets.split_key(vae_gen.get_config('positive'),
                                                                 source(images))
  for label in (POSITIVE, NEGATIVE):
    synthetic.write_synthetic(out, _images(2), label, {'split_key': key})
    synthetic.write_synthetic(older, _images(2), label,
                              {'split_key': {k: v for k, v in key.items() if k != 'groups'}})
  config = cnn_cls.get_config('synthetic,smoke')
  config.split, config.synthetic_dirs = 'grouped', out
  assert datasets.check_training_data(config, source(images)) == [out]
  replaced = images.copy()
  replaced[3] = _images(1, size=32, seed=5)[0]  # 3.png is no longer 1.png's copy
  with pytest.raises(ValueError, match=r'export/(yes|no) comes from a generator trained when '
                     r'other slices of the data were near-duplicates \(a file replaced since'):
    datasets.check_training_data(config, source(replaced))
  config.synthetic_dirs = older  # (cannot be checked: a warning)
  assert datasets.check_training_data(config, source(replaced)) == [older]


def test_the_training_key_changes_with_a_re_export_of_a_class_read(tmp_path):
  # loop.fit refuses to resume a run whose key changed: a classifier killed (or finished) on
  # one export would otherwise continue on another.
  from configs import cnn_cls, cvae_cls
  from brainjax.tasks import datasets
  out = str(tmp_path / 'export')
  for label in (POSITIVE, NEGATIVE):
    synthetic.write_synthetic(out, _images(2), label, {'seed': 0})
  cnn, cvae = cnn_cls.get_config('synthetic,smoke'), cvae_cls.get_config('synthetic,smoke')
  cnn.synthetic_dirs = cvae.synthetic_dirs = out
  both = synthetic.read_synthetic(out)
  healthy = both.with_label(NEGATIVE)
  def keys():  # (the key a checkpoint keeps: the first of training_key's two)
    return datasets.training_key(cnn, both)[0], datasets.training_key(cvae, healthy)[0]
  first = keys()
  os.rename(out, str(tmp_path / 'moved'))  # a moved study: the same data
  cnn.synthetic_dirs = cvae.synthetic_dirs = str(tmp_path / 'moved')
  assert keys() == first
  # The same images re-exported by a generator whose workdir moved: the same data.
  synthetic.write_synthetic(str(tmp_path / 'moved'), _images(2), POSITIVE,
                            {'seed': 0, 'checkpoint': str(tmp_path / 'elsewhere')})
  assert keys() == first
  synthetic.write_synthetic(str(tmp_path / 'moved'), _images(2, seed=5), POSITIVE, {'seed': 0})
  assert keys()[0] != first[0]  # same ids, another export
  assert keys()[1] == first[1]  # the CVAE reads no tumour slices
  real = cnn_cls.get_config('real,smoke')
  assert (datasets.training_key(real, both)[0]
          != datasets.training_key(real, both.take([0, 1, 2]))[0])
  # A file replaced under its name: the same ids and labels, other pixels.
  replaced = both.take(np.arange(len(both)))
  replaced.images[0] = 1 - replaced.images[0]
  key, without_pixels, _ = datasets.training_key(real, both)
  assert key not in datasets.training_key(real, replaced)
  assert without_pixels == datasets.training_key(real, replaced)[1]  # (what brainjax kept before)
  # A classifier's key covers its validation slices (they pick its best checkpoint) the same way.
  with_validation = datasets.training_key(real, both, validation=both)
  assert with_validation[1:] == datasets.training_key(real, both)  # (what brainjax kept before)
  assert with_validation[0] not in datasets.training_key(real, both, validation=replaced)
  assert with_validation[0] not in datasets.training_key(real, both, validation=both.take([0, 1]))


def test_a_run_begun_on_an_export_without_a_digest_resumes_on_its_rewrite(tmp_path):
  # Exports written before they recorded a digest of their images: a checkpoint then kept
  # the key of the whole manifest entry; the same export rewritten now has a digest too.
  from configs import cnn_cls
  from brainjax.tasks import datasets
  out = str(tmp_path / 'export')
  for label in (POSITIVE, NEGATIVE):
    synthetic.write_synthetic(out, _images(2, seed=label), label, {'seed': 0})
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  for entry in manifest['classes'].values():
    del entry['pixels_sha256']
  json.dump(manifest, open(os.path.join(out, 'manifest.json'), 'w'))
  config = cnn_cls.get_config('synthetic,smoke')
  config.synthetic_dirs = out
  train = synthetic.read_synthetic(out)
  _, _, kept = datasets.training_key(config, train)  # what the older brainjax kept
  synthetic.write_synthetic(out, _images(2, seed=POSITIVE), POSITIVE, {'seed': 0})
  key, *older = datasets.training_key(config, train)
  assert key != kept and kept in older
  # A checkpoint written now keeps `key`, which other images change.
  synthetic.write_synthetic(out, _images(2, seed=7), POSITIVE, {'seed': 0})
  assert key not in datasets.training_key(config, train)


def test_exports_of_both_classes_at_once_keep_both_entries(tmp_path, monkeypatch):
  # Two generators exporting into one folder: each manifest update re-reads the manifest
  # under a lock, so neither writes back a copy without the other's class.
  out = str(tmp_path)
  synthetic.write_synthetic(out, _images(1), NEGATIVE, {'run': 0})
  file_names = synthetic._file_names

  def names_while_the_other_class_is_exported(count):
    monkeypatch.setattr(synthetic, '_file_names', file_names)
    synthetic.write_synthetic(out, _images(2), NEGATIVE, {'run': 1})  # as another process would
    return file_names(count)

  monkeypatch.setattr(synthetic, '_file_names', names_while_the_other_class_is_exported)
  synthetic.write_synthetic(out, _images(3), POSITIVE, {'run': 2})
  classes = synthetic.read_manifest(out)['classes']
  assert (classes['no']['run'], classes['yes']['run']) == (1, 2)
  assert len(synthetic.read_synthetic(out)) == 5


def test_a_killed_exports_staging_folder_is_removed_by_the_next(tmp_path):
  import subprocess
  import sys
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True).stdout.strip()
  for pid in (dead, str(os.getppid())):  # a finished process, and a running one
    (tmp_path / f'.yes.{pid}.staging').mkdir()
    (tmp_path / f'.yes.{pid}.staging' / '00000.png').write_bytes(b'half')
  synthetic.write_synthetic(str(tmp_path), _images(2), POSITIVE, {})
  assert sorted(f for f in os.listdir(tmp_path) if f.startswith('.')) == [
      f'.yes.{os.getppid()}.staging']  # another export may still be writing that one


def test_a_classifier_refuses_data_of_one_class_or_a_set_without_one(tmp_path):
  from types import SimpleNamespace
  from configs import cnn_cls
  from brainjax.tasks import datasets
  config = cnn_cls.get_config('real,smoke')

  def source():  # the export stands in for a real folder
    return SimpleNamespace(examples=synthetic.read_synthetic(str(tmp_path)))

  synthetic.write_synthetic(str(tmp_path), _images(30), NEGATIVE, {})
  with pytest.raises(ValueError, match=r'no tumour slices \(none readable in yes/\)'):
    datasets.classifier_split(config, source(), 'cnn')
  (tmp_path / 'Yes').mkdir()  # not read: the error says why
  config.data.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match=r'\(none readable in yes/; found Yes/: the class folders '
                     r'are yes/ and no/, in lower case\)'):
    datasets.classifier_split(config, source(), 'cnn')
  config.data.data_dir = ''
  with pytest.raises(ValueError, match='no tumour slices to train on'):  # a generator's
    datasets.generator_training_set(config, source(), POSITIVE)
  synthetic.write_synthetic(str(tmp_path), _images(2), POSITIVE, {})  # too few to share out
  with pytest.raises(ValueError, match='leaves no tumour slices in the (val|test) set'):
    datasets.classifier_split(config, source(), 'cnn')
  synthetic.write_synthetic(str(tmp_path), _images(30), POSITIVE, {})
  assert len(datasets.classifier_split(config, source(), 'cnn').test) == 6
  assert len(datasets.classifier_split(config, source(), 'anomaly').train) > 0


def test_a_generator_refuses_an_export_folder_it_could_not_write_before_training(tmp_path):
  # (it trained to the end, then stopped on the folder)
  from brainjax.tasks import generation
  from configs import vae_gen
  config = vae_gen.get_config('positive,smoke')
  config.export.dir = str(tmp_path / 'theirs')
  generation.check_config(config)  # absent: fine
  (tmp_path / 'theirs').mkdir()
  generation.check_config(config)  # empty: fine
  (tmp_path / 'theirs' / 'keep.txt').write_text('x')
  with pytest.raises(ValueError, match='holds keep.txt but no manifest.json'):
    generation.check_config(config)
  config.export.dir = str(tmp_path / 'theirs' / 'keep.txt')
  with pytest.raises(ValueError, match='is not a folder'):
    generation.check_config(config)
  assert (tmp_path / 'theirs' / 'keep.txt').read_text() == 'x'


@pytest.mark.parametrize('split', ['random', 'grouped'])
def test_a_generator_trains_only_on_slices_no_classifier_evaluates_on(split, tmp_path):
  # Healthy exports train both classifiers (BrainCVAE reads healthy slices only), tumour
  # exports only BrainCNN: each generator must not have seen those classifiers' validation or
  # test slices (for healthy ones, the anomaly protocol's too). Grouped, 10 healthy slices
  # have a tumour copy: BrainCNN's split stratifies such a pair as healthy, the anomaly
  # protocol as tumour (so it validates or tests on both).
  from types import SimpleNamespace
  from configs import vae_gen
  from brainjax.tasks import datasets
  healthy = _images(40)
  synthetic.write_synthetic(str(tmp_path), healthy, NEGATIVE, {})
  synthetic.write_synthetic(str(tmp_path), np.concatenate([healthy[:10], _images(30, seed=1)]),
                            POSITIVE, {})
  examples = synthetic.read_synthetic(str(tmp_path))
  source = SimpleNamespace(examples=examples, raw_thumbnails=examples.images)
  for variant, label, protocols in (('negative', NEGATIVE, ('cnn', 'anomaly')),
                                    ('positive', POSITIVE, ('cnn',))):
    config = vae_gen.get_config(f'{variant},smoke')
    config.split = split
    evaluated = set()
    for protocol in protocols:
      parts = datasets.split(config, source, protocol)
      evaluated |= set(examples.ids[np.concatenate([parts.val, parts.test])])
    train = datasets.generator_training_set(config, source, label)
    assert len(train) > 0 and (train.labels == label).all()
    assert not set(train.ids) & evaluated, variant
