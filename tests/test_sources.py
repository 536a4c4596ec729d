"""Data sources: phantom, folder, Br35H (TFDS builder), synthetic; skips; the cache."""
import errno
import hashlib
import io
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib

from absl import logging
import ml_collections
import numpy as np
from PIL import Image
import pytest

from brainjax.data import dedup
from brainjax.data import image_io
from brainjax.data import inputs
from brainjax.data import layout
from brainjax.data import phantom
from brainjax.data import sources
from brainjax.data import synthetic
from brainjax.data.br35h import load_br35h_records


def _cfg(**overrides):
  cfg = dict(dataset='phantom', data_dir='', num_per_class=3, image_size=64, margin=0.05, seed=0)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def _scan(seed, index, positive=False):
  return Image.fromarray(phantom.phantom_slice(seed, index, positive).image)


def _png_bytes(image: Image.Image, fmt='PNG') -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.fixture
def messy_folder(tmp_path):
  """top/yes, top/no with good scans, a nested folder, 16-bit, and bad files."""
  root = tmp_path / 'collection'
  for label, positive in (('yes', True), ('no', False)):
    folder = root / 'top' / label
    (folder / 'nested').mkdir(parents=True)
    for i in range(3):
      _scan(1, i, positive).save(folder / f'{label}{i}.jpg', quality=90)
    _scan(1, 9, positive).convert('L').save(folder / 'nested' / 'deep.png')
  sixteen = (np.asarray(_scan(1, 5).convert('L'), np.uint16) * 257)
  Image.fromarray(sixteen).save(root / 'top' / 'no' / 'sixteen.png')
  (root / 'top' / 'yes' / 'notes.txt').write_text('not a scan')
  (root / 'top' / 'yes' / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0garbage')
  good = _png_bytes(_scan(1, 7, True), 'JPEG')
  (root / 'top' / 'yes' / 'truncated.jpg').write_bytes(good[:len(good) // 2])
  Image.fromarray(np.zeros((50, 60), np.uint8)).save(root / 'top' / 'no' / 'blank.png')
  (root / 'top' / 'no' / '.DS_Store').write_bytes(b'\x00\x01')
  return root


def _digest_tree(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      path = os.path.join(dirpath, f)
      out[path] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  return out


def test_unknown_dataset_lists_valid_names(tmp_path):
  with pytest.raises(ValueError, match='phantom, br35h, folder$'):
    sources.load_source(_cfg(dataset='mnist'), str(tmp_path))


def test_phantom_examples_and_masks(tmp_path):
  examples, _ = sources.load_source(_cfg(num_per_class=3, seed=4), str(tmp_path))
  assert examples.images.shape == (6, 64, 64, 1) and examples.images.dtype == np.float32
  assert examples.masks.shape == (6, 64, 64) and examples.masks.dtype == np.uint8
  assert list(examples.ids[:2]) == ['no/phantom_00000.png', 'no/phantom_00001.png']
  np.testing.assert_array_equal(examples.labels, [0, 0, 0, 1, 1, 1])
  assert examples.masks[:3].sum() == 0 and all(m.sum() > 0 for m in examples.masks[3:])
  source = sources.load_source(_cfg(num_per_class=3, seed=4), str(tmp_path))
  assert source.raw_thumbnails.shape == (6, 32, 32)
  raw = phantom.phantom_slice(4, 1, False).image
  expected = np.asarray(Image.fromarray(raw).convert('L').resize((32, 32), Image.BILINEAR)) / 255
  np.testing.assert_allclose(source.raw_thumbnails[1], expected, atol=0.02)
  # Each mask is its raw slice's, cropped as the slice is: mapped back, it reproduces it.
  for k, index in enumerate([0, 1, 2]):
    raw = phantom.phantom_slice(4, index, True)
    image, info = sources.preprocess_lib.preprocess(image_io.to_gray_float(raw.image), 64, 0.05)
    np.testing.assert_allclose(examples.images[3 + k, ..., 0], image, atol=1e-6)
    back = sources.preprocess_lib.to_original_grid(examples.masks[3 + k], info) >= 0.5
    overlap = (back & (raw.mask > 0)).sum() / max(1, raw.mask.sum())
    assert overlap > 0.7


def test_cache_hit_and_key(tmp_path, monkeypatch):
  cache = str(tmp_path)
  first = sources.load_source(_cfg(), cache).examples
  assert len([f for f in os.listdir(cache) if f.endswith('.npz')]) == 1
  assert not [f for f in os.listdir(cache) if f.endswith('.tmp')]

  def no_work(*args, **kwargs):
    raise AssertionError('preprocessing ran although the cache holds the result')

  monkeypatch.setattr(sources, '_run_jobs', no_work)
  second, _ = sources.load_source(_cfg(), cache)
  np.testing.assert_array_equal(first.images, second.images)
  np.testing.assert_array_equal(first.masks, second.masks)
  assert list(first.ids) == list(second.ids)
  for change in (dict(image_size=32), dict(margin=0.1), dict(seed=1), dict(num_per_class=2)):
    with pytest.raises(AssertionError, match='cache holds'):
      sources.load_source(_cfg(**change), cache)  # a new key: it would have to recompute


def test_damaged_cache_is_rebuilt(tmp_path):
  cache = str(tmp_path)
  first = sources.load_source(_cfg(num_per_class=1), cache).examples
  (path,) = [os.path.join(cache, f) for f in os.listdir(cache) if f.endswith('.npz')]
  whole = open(path, 'rb').read()
  flipped = bytearray(whole)
  flipped[len(whole) // 3] ^= 1  # inside images.npy: a CRC error
  for damaged in (b'not an npz', b'', whole[:1000], bytes(flipped)):
    with open(path, 'wb') as f:
      f.write(damaged)
    again = sources.load_source(_cfg(num_per_class=1), cache).examples
    np.testing.assert_array_equal(first.images, again.images)


def test_an_image_in_both_classes_is_named(tmp_path, monkeypatch):
  root = tmp_path / 'data'
  for label, positive in (('yes', True), ('no', False)):
    (root / label).mkdir(parents=True)
    for i in range(2):
      _scan(2, i, positive).save(root / label / f'{label}{i}.png')
  shutil.copyfile(root / 'yes' / 'yes1.png', root / 'no' / 'copy.png')
  for label in ('yes', 'no'):  # (skipped as no image: no label noise, though named so once)
    (root / label / 'notes.txt').write_text('the same notes')
  warnings = _capture_warnings(monkeypatch)
  examples, _ = sources.load_source(_cfg(dataset='folder', data_dir=str(root), num_per_class=0),
                                    str(tmp_path / 'cache'))
  assert len(examples) == 5  # kept, as given
  (message,) = [w for w in warnings if 'identical files in yes/ and no/' in w]
  assert message.endswith('kept under both labels: 1 (no/copy.png = yes/yes1.png)')
  warnings.clear()  # (and so from the cache)
  sources.load_source(_cfg(dataset='folder', data_dir=str(root), num_per_class=0),
                      str(tmp_path / 'cache'))
  (message,) = [w for w in warnings if 'identical files in yes/ and no/' in w]
  assert message.endswith('kept under both labels: 1 (no/copy.png = yes/yes1.png)')
  for label in ('yes', 'no'):
    os.remove(root / label / 'notes.txt')
  warnings.clear()
  os.remove(root / 'no' / 'copy.png')
  sources.load_source(_cfg(dataset='folder', data_dir=str(root), num_per_class=0),
                      str(tmp_path / 'cache'))
  assert not [w for w in warnings if 'identical files' in w]


def test_folder_skips_bad_files_logs_them_and_never_modifies_input(messy_folder, tmp_path,
                                                                   monkeypatch):
  before = _digest_tree(messy_folder)
  warnings = _capture_warnings(monkeypatch)
  examples, _ = sources.load_source(
      _cfg(dataset='folder', data_dir=str(messy_folder), num_per_class=0), str(tmp_path))
  names = set(examples.ids)
  assert {'yes/yes0.jpg', 'yes/nested/deep.png', 'no/sixteen.png', 'no/nested/deep.png'} <= names
  assert not {'yes/notes.txt', 'yes/corrupt.jpg', 'yes/truncated.jpg', 'no/blank.png'} & names
  assert len(examples) == 9 and examples.masks is None
  np.testing.assert_array_equal(examples.labels, [n.startswith('yes/') for n in examples.ids])
  (message,) = [w for w in warnings if 'Skipped' in w]
  assert 'Skipped 4 of 13' in message and 'truncated' in message
  assert _digest_tree(messy_folder) == before
  # The first N files per class in sorted name order (then unusable ones are skipped):
  # no/blank.png and yes/corrupt.jpg are among them.
  few = sources.load_source(
      _cfg(dataset='folder', data_dir=str(messy_folder), num_per_class=2), str(tmp_path)).examples
  assert list(few.ids) == ['no/nested/deep.png', 'yes/nested/deep.png']


def test_a_folder_file_replaced_under_its_name_is_read_anew(messy_folder, tmp_path):
  # The cache is keyed by each file's bytes, not only its name.
  cfg = _cfg(dataset='folder', data_dir=str(messy_folder), num_per_class=0)
  first = sources.load_source(cfg, str(tmp_path)).examples
  _scan(2, 3, True).save(messy_folder / 'top' / 'yes' / 'yes0.jpg', quality=90)
  second = sources.load_source(cfg, str(tmp_path)).examples
  assert list(second.ids) == list(first.ids)
  changed = [i for i in range(len(first)) if not np.array_equal(first.images[i], second.images[i])]
  assert [first.ids[i] for i in changed] == ['yes/yes0.jpg']


def test_folder_errors(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='no yes/ or no/'):
    sources.load_source(_cfg(dataset='folder', data_dir=str(empty)), str(tmp_path))
  (empty / 'yes').mkdir()
  with pytest.raises(ValueError, match='hold no files'):
    sources.load_source(_cfg(dataset='folder', data_dir=str(empty)), str(tmp_path))
  (empty / 'yes' / 'a.txt').write_text('text')
  with pytest.raises(ValueError, match='all skipped'):
    sources.load_source(_cfg(dataset='folder', data_dir=str(empty)), str(tmp_path))
  with pytest.raises(ValueError, match='data_dir'):
    sources.load_source(_cfg(dataset='br35h', data_dir=''), str(tmp_path))


def _capture_warnings(monkeypatch):
  """The list that logging.warning's messages, formatted, are appended to from now on."""
  warnings = []
  monkeypatch.setattr(logging, 'warning', lambda msg, *args: warnings.append(msg % args))
  return warnings


def _one_scan_per_class(root):
  """root/yes/yes0.png (a tumour slice) and root/no/no0.png."""
  for label in ('yes', 'no'):
    (root / label).mkdir()
    _scan(3, 0, label == 'yes').save(root / label / f'{label}0.png')


def _fake_br35h(root):
  for label, positive in (('yes', True), ('no', False)):
    (root / label).mkdir(parents=True)
    for i in range(2):
      _scan(2, i, positive).save(root / label / f'{label[0]}{i}.jpg')
  (root / 'yes' / 'broken.jpg').write_bytes(b'\xff\xd8\xff')
  return root


def test_br35h_builder_from_folder_and_zip(tmp_path):
  folder = _fake_br35h(tmp_path / 'download' / 'Br35H')
  records = load_br35h_records(str(tmp_path / 'download'), str(tmp_path / 'tfds'))
  assert [r[:2] for r in records] == [('no/n0.jpg', 0), ('no/n1.jpg', 0), ('yes/broken.jpg', 1),
                                      ('yes/y0.jpg', 1), ('yes/y1.jpg', 1)]
  assert records[3][2] == (folder / 'yes' / 'y0.jpg').read_bytes()  # raw bytes, not decoded
  archive = tmp_path / 'br35h.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for path in sorted(folder.rglob('*.jpg')):
      z.write(path, os.path.join('Br35H', os.path.relpath(path, folder)))
    z.writestr('__MACOSX/yes/._y0.jpg', b'junk')
  from_zip = load_br35h_records(str(archive), str(tmp_path / 'tfds'))
  assert from_zip == records
  with pytest.raises(ValueError, match='not found'):
    load_br35h_records(str(tmp_path / 'missing'), str(tmp_path / 'tfds'))


def test_br35h_files_left_out_of_the_prepared_copy_are_named_on_every_read(tmp_path, monkeypatch):
  # (only the run that prepared the copy named them; later ones counted them nowhere)
  download = _fake_br35h(tmp_path / 'download')
  (download / 'yes' / 'gone.jpg').symlink_to(tmp_path / 'missing.jpg')
  warnings = _capture_warnings(monkeypatch)
  for _ in range(2):
    warnings.clear()
    assert len(load_br35h_records(str(download), str(tmp_path / 'tfds'))) == 5
    assert [w for w in warnings if 'gone.jpg' in w]
  (left_out,) = [w for w in warnings if 'left out' in w]
  assert left_out.startswith(f'1 Br35H files in {download} could not be read when it was '
                             'prepared, and are left out: yes/gone.jpg')


@pytest.mark.parametrize('damage', ['truncate', 'delete', 'info', 'version'])
def test_a_damaged_prepared_br35h_copy_is_one_line_naming_it(tmp_path, damage):
  # (a copy cut short, a record file gone, a damaged dataset_info.json: a traceback every run)
  download, data_dir = _fake_br35h(tmp_path / 'download'), tmp_path / 'tfds'
  assert len(load_br35h_records(str(download), str(data_dir))) == 5
  (records,) = [p for p in data_dir.rglob('br35h-train.array_record-*')]
  (info,) = [p for p in data_dir.rglob('dataset_info.json')]
  if damage == 'truncate':
    records.write_bytes(records.read_bytes()[:records.stat().st_size // 2])
  elif damage == 'delete':
    records.unlink()
  elif damage == 'info':
    info.write_text(info.read_text()[:40])
  else:  # (TFDS asserts the version it records is the builder's)
    info.write_text(info.read_text().replace('"1.0.0"', '"1.0.1"'))
  with pytest.raises(ValueError, match=r'^the Br35H copy prepared in .*br35h_[0-9a-f]+ cannot be '
                     r'read \(.+\): delete that folder, and the next run prepares it again$'):
    load_br35h_records(str(download), str(data_dir))


def test_what_a_killed_br35h_preparation_left_is_removed_by_the_next(tmp_path):
  download, data_dir = _fake_br35h(tmp_path / 'download'), tmp_path / 'tfds'
  assert len(load_br35h_records(str(download), str(data_dir))) == 5
  (version,) = [p for p in data_dir.glob('br35h_*/br35h/*') if p.is_dir()]
  unfinished = version.parent / f'incomplete.ABC123_{version.name}'
  version.rename(unfinished)  # (as TFDS leaves a preparation killed before its last rename)
  assert len(load_br35h_records(str(download), str(data_dir))) == 5
  assert sorted(p.name for p in version.parent.iterdir()) == [version.name]


def test_preparing_br35h_leaves_nothing_in_the_system_s_temp_folder(tmp_path, monkeypatch):
  # TFDS made an empty tmp*tfds folder there for each builder of an unprepared dataset.
  import tempfile
  (tmp_path / 'temp').mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'temp'))
  _fake_br35h(tmp_path / 'download')
  assert len(load_br35h_records(str(tmp_path / 'download'), str(tmp_path / 'tfds'))) == 5
  assert list((tmp_path / 'temp').iterdir()) == []



# Loads the zip argv[1] into the data_dir argv[2] once argv[3] exists; prints the records'
# count and digest.
_LOAD_WHEN_TOLD = """
import hashlib, os, sys, time
from brainjax.data.br35h import load_br35h_records
open(sys.argv[3] + '.ready.' + str(os.getpid()), 'w').close()
while not os.path.exists(sys.argv[3]):
  time.sleep(0.01)
records = load_br35h_records(sys.argv[1], sys.argv[2])
print(len(records), hashlib.sha256(repr(records).encode()).hexdigest())
"""


def test_two_processes_preparing_one_br35h_zip_at_once_both_read_it(tmp_path):
  # (Each emptied the other's staging folder, or lost TFDS's final rename: one failed.)
  folder = _fake_br35h(tmp_path / 'download')
  archive = tmp_path / 'z.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for path in sorted(folder.rglob('*.jpg')):
      z.write(path, os.path.relpath(path, folder))
  go = tmp_path / 'go'
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
  runs = [subprocess.Popen([sys.executable, '-c', _LOAD_WHEN_TOLD, str(archive),
                            str(tmp_path / 'tfds'), str(go)], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
  deadline = time.time() + 120
  while len(list(tmp_path.glob('go.ready.*'))) < 2 and time.time() < deadline:
    time.sleep(0.05)  # (both have imported TFDS: they prepare at the same moment)
  go.touch()
  outputs = [run.communicate(timeout=180) for run in runs]
  assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
  digests = [out.splitlines()[-1] for out, _ in outputs]  # (TFDS prints its progress first)
  assert digests[0] == digests[1] and digests[0].startswith('5 ')
  assert load_br35h_records(str(archive), str(tmp_path / 'tfds')) == load_br35h_records(
      str(folder), str(tmp_path / 'tfds2'))


def test_a_br35h_preparation_without_room_names_its_folder(tmp_path, monkeypatch):
  # (array_record's RuntimeError, a 60-line traceback, named the file of one split only.)
  from brainjax.data.br35h import br35h_dataset_builder  # pylint: disable=g-import-not-at-top

  def prepare_on_a_full_disk(*_, **__):
    raise RuntimeError('Failed to finalize writing of split "train": write() failed: No space '
                       'left on device; writing x/br35h-train.array_record-00000-of-00001')
  monkeypatch.setattr(br35h_dataset_builder.Br35h, 'download_and_prepare', prepare_on_a_full_disk)
  folder = _fake_br35h(tmp_path / 'download')
  with pytest.raises(OSError) as raised:
    load_br35h_records(str(folder), str(tmp_path / 'tfds'))
  where = re.escape(str(tmp_path / 'tfds'))
  assert re.fullmatch(f'cannot prepare Br35H in {where}/br35h_[0-9a-f]+ '
                      r'\(--config\.cache_dir, BRAINJAX_CACHE\): No space left on device',
                      str(raised.value)), raised.value


def test_a_nested_folder_lists_its_files_in_the_order_of_its_zip(tmp_path):
  # (A folder's own files came before its subfolders', so num_per_class took other files.)
  names = ['no/n.png', 'yes/a/x.png', 'yes/b.png', 'yes/c/d/y.png', 'yes/z.png']
  with zipfile.ZipFile(tmp_path / 'data.zip', 'w') as archive:
    for name in names:
      (tmp_path / 'data' / name).parent.mkdir(parents=True, exist_ok=True)
      (tmp_path / 'data' / name).write_bytes(b'x')
      archive.writestr(name, b'x')
  assert [n for n, _, _ in layout.iter_folder(str(tmp_path / 'data'))] == names
  assert [n for n, _, _ in layout.iter_zip(str(tmp_path / 'data.zip'))] == names

def test_br35h_in_a_folder_holding_its_zip_is_keyed_by_that_zip(tmp_path):
  # Two downloads, each a folder holding its zip: the second must not get the first's records.
  for name, count in (('a', 1), ('b', 2)):
    (tmp_path / name).mkdir()
    with zipfile.ZipFile(tmp_path / name / 'br35h.zip', 'w') as z:
      for i in range(count):
        z.writestr(f'yes/y{i}.png', _png_bytes(_scan(3, i, True)))
  first = load_br35h_records(str(tmp_path / 'a'), str(tmp_path / 'tfds'))
  second = load_br35h_records(str(tmp_path / 'b'), str(tmp_path / 'tfds'))
  assert [r[0] for r in first] == ['yes/y0.png']
  assert [r[0] for r in second] == ['yes/y0.png', 'yes/y1.png']


def test_a_zip_is_linked_afresh_after_an_interrupted_preparation(tmp_path):
  # An interrupted run left <prepared>/manual/br35h.zip -> a/br35h.zip; the zip (same key) has
  # moved to b/, and a/ holds another zip, or nothing: neither may be read or written.
  from brainjax.data.br35h import loader
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  moved = tmp_path / 'b' / 'br35h.zip'
  with zipfile.ZipFile(moved, 'w') as z:
    z.writestr('yes/y0.png', b'y0')
  staging = tmp_path / 'prepared' / 'manual'
  for other in (b'another zip', None):
    staging.mkdir(parents=True, exist_ok=True)
    (staging / 'br35h.zip').unlink(missing_ok=True)
    (staging / 'br35h.zip').symlink_to(tmp_path / 'a' / 'br35h.zip')
    (staging / 'partial.zip').write_bytes(b'part of an earlier copy')
    if other is not None:
      (tmp_path / 'a' / 'br35h.zip').write_bytes(other)
    else:
      (tmp_path / 'a' / 'br35h.zip').unlink()
    assert loader._manual_dir_for(str(moved), str(staging)) == str(staging)
    assert os.listdir(staging) == ['br35h.zip']
    assert (staging / 'br35h.zip').read_bytes() == moved.read_bytes()
  assert os.listdir(tmp_path / 'a') == []


def test_class_folders_at_the_root_win_over_a_top_folder_s(tmp_path):
  # The Kaggle "brain tumor detection" zip holds yes/ and no/ twice, at its root and in a top
  # folder: read both and every scan would be loaded twice under one name (copies across splits).
  for top in ('', 'brain_tumor_dataset/'):
    for label in ('yes', 'no'):
      (tmp_path / 'data' / top / label).mkdir(parents=True)
      _scan(4, 0, label == 'yes').save(tmp_path / 'data' / top / label / f'{label}0.png')
  assert [n for n, _, _ in layout.iter_folder(str(tmp_path / 'data'))] == ['no/no0.png',
                                                                          'yes/yes0.png']
  archive = tmp_path / 'data.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for path in sorted((tmp_path / 'data').rglob('*.png')):
      z.write(path, './' + os.path.relpath(path, tmp_path / 'data'))  # bsdtar's './' names
  assert [n for n, _, _ in layout.iter_zip(str(archive))] == ['no/no0.png', 'yes/yes0.png']
  for top in ('a', 'b'):
    (tmp_path / 'two' / top / 'yes').mkdir(parents=True)
  with pytest.raises(ValueError, match='several top folders'):
    list(layout.iter_folder(str(tmp_path / 'two')))


def test_a_linked_class_folder_is_read(tmp_path):
  (tmp_path / 'storage').mkdir()
  _scan(5, 0, True).save(tmp_path / 'storage' / 'y0.png')
  (tmp_path / 'storage' / 'loop').symlink_to(tmp_path / 'storage')  # read once, not forever
  (tmp_path / 'data' / 'no').mkdir(parents=True)
  _scan(5, 1).save(tmp_path / 'data' / 'no' / 'n0.png')
  (tmp_path / 'data' / 'yes').symlink_to(tmp_path / 'storage')
  assert [(n, y) for n, y, _ in layout.iter_folder(str(tmp_path / 'data'))] == [
      ('no/n0.png', 0), ('yes/y0.png', 1)]


def test_a_link_to_a_folder_inside_reads_that_folder_where_it_is(tmp_path):
  # misc/linked -> site/ sorts before site/: its files must keep site/'s labels, once.
  (tmp_path / 'site' / 'yes').mkdir(parents=True)
  _scan(5, 0, True).save(tmp_path / 'site' / 'yes' / 's.png')
  (tmp_path / 'misc').mkdir()
  (tmp_path / 'misc' / 'linked').symlink_to(tmp_path / 'site')
  assert [os.path.relpath(p, tmp_path) for p in layout.walk_files(str(tmp_path))] == [
      'site/yes/s.png']


def test_br35h_source_on_fake_download(tmp_path):
  _fake_br35h(tmp_path / 'br35h')
  examples, _ = sources.load_source(
      _cfg(dataset='br35h', data_dir=str(tmp_path / 'br35h'), num_per_class=0), str(tmp_path))
  assert list(examples.ids) == ['no/n0.jpg', 'no/n1.jpg', 'yes/y0.jpg', 'yes/y1.jpg']


def test_a_cache_that_cannot_be_written_is_named_and_the_run_goes_on(tmp_path, monkeypatch):
  # (A full cache folder was "[Errno 28] No space left on device", naming no path, and stopped
  # the run after all its preprocessing; so did a read-only one.)
  expected = sources.load_source(_cfg(), str(tmp_path / 'other')).examples
  real_savez = sources.np.savez

  def savez_on_a_full_disk(f, **_):
    f.write(b'PK')
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(sources.np, 'savez', savez_on_a_full_disk)
  warnings = _capture_warnings(monkeypatch)
  examples = sources.load_source(_cfg(), str(tmp_path / 'cache')).examples
  np.testing.assert_array_equal(examples.images, expected.images)
  (message,) = warnings
  assert message.startswith(f'cannot write the preprocessing cache {tmp_path / "cache"}/phantom_')
  assert message.endswith('.npz (--config.cache_dir, BRAINJAX_CACHE): No space left on device; '
                          'going on without caching.')
  assert os.listdir(tmp_path / 'cache') == []  # (no partial file)
  # A cache file is as readable as the umask allows (mkstemp's are the owner's alone).
  monkeypatch.setattr(sources.np, 'savez', real_savez)
  previous = os.umask(0o022)
  try:
    sources.load_source(_cfg(), str(tmp_path / 'shared'))
  finally:
    os.umask(previous)
  (cached,) = os.listdir(tmp_path / 'shared')
  assert os.stat(tmp_path / 'shared' / cached).st_mode & 0o777 == 0o644


def test_real_br35h_smoke(br35h_dir, cache_dir):
  examples, _ = sources.load_source(
      _cfg(dataset='br35h', data_dir=str(br35h_dir), num_per_class=4, image_size=128), cache_dir)
  assert len(examples) == 8 and examples.images.shape[1:] == (128, 128, 1)
  np.testing.assert_array_equal(examples.labels, [0] * 4 + [1] * 4)


@pytest.mark.slow
def test_real_br35h_full(br35h_dir, tmp_path):
  """All 3000 files: timing, nothing skipped, near-duplicate groups as measured."""
  before = _digest_tree(os.path.join(br35h_dir, 'no'))
  cfg = _cfg(dataset='br35h', data_dir=str(br35h_dir), num_per_class=0, image_size=128)
  start = time.time()
  examples = sources.load_source(cfg, str(tmp_path)).examples
  first = time.time() - start
  start = time.time()
  again = sources.load_source(cfg, str(tmp_path)).examples
  cached = time.time() - start
  print(f'Br35H 3000: first {first:.1f}s, cached {cached:.1f}s')
  assert len(examples) == 3000 and (examples.labels == 1).sum() == 1500
  np.testing.assert_array_equal(examples.images, again.images)
  assert cached < first / 3
  raw = sources.load_source(cfg, str(tmp_path)).raw_thumbnails
  for threshold in (0.995, 0.98):
    for view, groups in (
        ('preprocessed', dedup.near_duplicate_groups(examples.images, threshold)),
        ('raw', dedup.near_duplicate_groups(raw, threshold)),
        ('either', dedup.near_duplicate_groups(examples.images, threshold, extra_views=[raw]))):
      summary = dedup.group_summary(groups)
      print(f'groups at {threshold} ({view}): {summary}')
      # Many near-duplicates, flipped copies included (as measured: 373-826 groups).
      assert 0.1 * 3000 < summary['groups'] < 0.35 * 3000
  assert _digest_tree(os.path.join(br35h_dir, 'no')) == before


@pytest.mark.slow
def test_phantom_full_timing(tmp_path):
  start = time.time()
  examples = sources.load_source(_cfg(num_per_class=1500, image_size=128), str(tmp_path)).examples
  print(f'phantom 3000 generated + preprocessed in {time.time() - start:.1f}s')
  assert len(examples) == 3000


def test_br35h_prepared_copy_follows_a_file_changed_in_place(tmp_path):
  # Same name, size and mtime, other bytes: the prepared copy is keyed on contents.
  folder = _fake_br35h(tmp_path / 'download')
  target = folder / 'yes' / 'y0.jpg'
  load_br35h_records(str(folder), str(tmp_path / 'tfds'))
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0xFF
  stat = target.stat()
  target.write_bytes(bytes(data))
  os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  records = dict((name, raw) for name, _, raw in load_br35h_records(str(folder),
                                                                     str(tmp_path / 'tfds')))
  assert records['yes/y0.jpg'] == bytes(data)
  archive = tmp_path / 'br35h.zip'
  for flip in (False, True):
    with zipfile.ZipFile(archive, 'w') as z:  # stored: the same size either way
      z.writestr('yes/y0.jpg', bytes(data[:-1]) + bytes([data[-1] ^ flip]))
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (record,) = load_br35h_records(str(archive), str(tmp_path / 'tfds'))
    assert record[2][-1] == data[-1] ^ flip


def test_zip_members_sharing_a_path_are_read_once_the_last(tmp_path):
  archive = tmp_path / 'data.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    z.writestr('yes/y0.png', b'first')
    z.writestr('./yes/y0.png', b'second')
    with pytest.warns(UserWarning, match='Duplicate name'):
      z.writestr('yes/y0.png', b'third')
      z.writestr('./yes/y0.png', b'last')  # last in the archive, not in name order
    z.writestr('no/n0.png', b'healthy')
  assert [(n, raw) for n, _, raw in layout.iter_zip(str(archive))] == [
      ('no/n0.png', b'healthy'), ('yes/y0.png', b'last')]


def test_a_damaged_zip_member_is_skipped_not_fatal(tmp_path):
  archive = tmp_path / 'br35h.zip'
  with zipfile.ZipFile(archive, 'w', zipfile.ZIP_DEFLATED) as z:
    for name in ('no/n0.png', 'yes/y0.png', 'yes/y1.png'):
      z.writestr(name, _png_bytes(_scan(5, len(name), name.startswith('yes'))))
  data = bytearray(archive.read_bytes())
  info = zipfile.ZipFile(archive).getinfo('yes/y0.png')
  start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # its local header
  data[start + info.compress_size // 2] ^= 1  # a CRC error (or a bad deflate stream)
  archive.write_bytes(bytes(data))
  assert [(n, raw is None) for n, _, raw in layout.iter_zip(str(archive))] == [
      ('no/n0.png', False), ('yes/y0.png', True), ('yes/y1.png', False)]
  records = load_br35h_records(str(archive), str(tmp_path / 'tfds'))
  assert [r[0] for r in records] == ['no/n0.png', 'yes/y1.png']


def test_a_backslash_in_a_folder_s_file_name_is_a_character(tmp_path):
  # On Linux 'yes/a\\b.png' and 'yes/a/b.png' are two files: two ids, not one twice.
  (tmp_path / 'yes' / 'a').mkdir(parents=True)
  (tmp_path / 'yes' / 'a' / 'b.png').write_bytes(b'x')
  (tmp_path / 'yes' / 'a\\b.png').write_bytes(b'y')
  (tmp_path / 'yes' / 'c\\.d.png').write_bytes(b'z')  # not a hidden file
  (tmp_path / 'no').mkdir()
  (tmp_path / 'no' / '._n0.png').write_bytes(b'macOS metadata')
  assert sorted(n for n, _, _ in layout.iter_folder(str(tmp_path))) == [
      'yes/a/b.png', 'yes/a\\b.png', 'yes/c\\.d.png']


def test_macos_metadata_beside_a_zip_is_not_a_second_zip(tmp_path):
  with zipfile.ZipFile(tmp_path / 'br35h.zip', 'w') as z:
    z.writestr('yes/a.png', b'')
  (tmp_path / '._br35h.zip').write_bytes(b'\x00\x05\x16\x07 Mac OS X')
  assert layout.locate_download(str(tmp_path)) == ('zip', str(tmp_path / 'br35h.zip'))


def test_a_link_up_the_tree_is_not_read_and_a_fifo_is_refused(tmp_path, monkeypatch):
  # yes/loop -> .. would read no/ again under yes/, as tumour slices; reading a FIFO would
  # wait for a writer: it is listed, and refused by its reader (a counted skip).
  _one_scan_per_class(tmp_path)
  (tmp_path / 'yes' / 'loop').symlink_to(tmp_path)
  os.mkfifo(tmp_path / 'yes' / 'pipe.png')
  (tmp_path / 'no' / 'broken.png').symlink_to(tmp_path / 'missing.png')  # kept: reported
  assert [(n, y) for n, y, _ in layout.iter_folder(str(tmp_path))] == [
      ('no/broken.png', 0), ('no/no0.png', 0), ('yes/pipe.png', 1), ('yes/yes0.png', 1)]
  assert sources.file_digest(str(tmp_path / 'yes' / 'pipe.png')).startswith(
      'unreadable: not a regular file')
  with pytest.raises(image_io.UnreadableImage, match='not a regular file but a pipe'):
    image_io.read_image_file(tmp_path / 'yes' / 'pipe.png')
  warnings = _capture_warnings(monkeypatch)
  examples, _ = sources.load_source(_cfg(dataset='folder', data_dir=str(tmp_path),
                                         num_per_class=0), str(tmp_path / 'cache'))
  assert list(examples.ids) == ['no/no0.png', 'yes/yes0.png']
  (message,) = [w for w in warnings if 'Skipped' in w]
  assert 'Skipped 2 of 4' in message and 'yes/pipe.png (unreadable' in message


def test_a_file_too_large_for_an_image_is_a_counted_skip_neither_hashed_nor_read(
    tmp_path, monkeypatch):
  # (a stray 30 GiB backup was hashed for a minute, then read whole: a MemoryError traceback)
  _one_scan_per_class(tmp_path)
  with open(tmp_path / 'yes' / 'backup.jpg', 'wb') as f:  # sparse
    f.truncate(layout.MAX_IMAGE_BYTES + 1)
  digest = sources.file_digest(str(tmp_path / 'yes' / 'backup.jpg'), layout.MAX_IMAGE_BYTES)
  assert digest.startswith(f'too large: {layout.MAX_IMAGE_BYTES + 1} bytes')
  warnings = _capture_warnings(monkeypatch)
  examples, _ = sources.load_source(_cfg(dataset='folder', data_dir=str(tmp_path),
                                         num_per_class=0), str(tmp_path / 'cache'))
  assert list(examples.ids) == ['no/no0.png', 'yes/yes0.png']
  (message,) = [w for w in warnings if 'Skipped' in w]
  assert 'Skipped 1 of 3' in message and 'file too large for an image' in message
  warnings.clear()  # a run reading the cache names it too (it said only a count, at INFO)
  sources.load_source(_cfg(dataset='folder', data_dir=str(tmp_path), num_per_class=0),
                      str(tmp_path / 'cache'))
  (message,) = [w for w in warnings if 'Skipped' in w]
  assert 'Skipped 1 of 3 files (when cache' in message
  assert 'yes/backup.jpg (unreadable: file' in message


def test_a_run_folder_inside_a_class_folder_is_not_read(tmp_path, monkeypatch):
  # (a predict with --workdir=data/yes/predictions wrote overlays of healthy scans there, and
  # training read them as tumour slices)
  _one_scan_per_class(tmp_path)
  run = tmp_path / 'yes' / 'predictions'
  (run / 'overlays' / 'no').mkdir(parents=True)
  (run / 'config.json').write_text('{"task": "predict"}')
  _scan(3, 1, False).save(run / 'overlays' / 'no' / 'no0.png')
  (tmp_path / 'yes' / 'notes').mkdir()
  (tmp_path / 'yes' / 'notes' / 'config.json').write_text('["not a run"]')
  warnings = _capture_warnings(monkeypatch)
  assert [n for n, _, _ in layout.iter_folder(str(tmp_path))] == [
      'no/no0.png', 'yes/notes/config.json', 'yes/yes0.png']
  (message,) = [w for w in warnings if 'run folders' in w]
  assert 'not reading the 2 files of brainjax run folders under yes/' in message


def test_capitalised_class_folders_are_named_in_the_error_and_predict_s_warning(
    tmp_path, monkeypatch):
  for label in ('Yes', 'No'):
    (tmp_path / label).mkdir()
    _scan(3, 0, label == 'Yes').save(tmp_path / label / 'a.png')
  for dataset in ('folder', 'br35h'):
    with pytest.raises(ValueError, match='found No/, Yes/: the class folders are yes/ and no/'):
      sources.check_location(_cfg(dataset=dataset, data_dir=str(tmp_path)))
  warnings = _capture_warnings(monkeypatch)
  assert all(f.label is None for f in inputs.list_inputs(str(tmp_path)))
  assert [w for w in warnings if '2 inputs, e.g. No/a.png, are unlabelled' in w]


def test_a_capitalised_folder_beside_the_class_folders_is_named_in_a_warning(tmp_path,
                                                                           monkeypatch):
  # No/ beside no/ is not read (a case-sensitive name), and says so: its slices were left out
  # of training without a word, in a folder and in a zip alike.
  _one_scan_per_class(tmp_path)
  (tmp_path / 'No').mkdir()
  _scan(3, 0, False).save(tmp_path / 'No' / 'more.png')
  warnings = _capture_warnings(monkeypatch)
  assert [n for n, _, _ in layout.iter_folder(str(tmp_path))] == ['no/no0.png', 'yes/yes0.png']
  assert [w for w in warnings if 'not reading other folders; found No/' in w]
  archive = tmp_path / 'data.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for name in ('yes/yes0.png', 'no/no0.png', 'No/more.png'):
      z.write(tmp_path / name, name)
  del warnings[:]
  assert sorted(n for n, _, _ in layout.iter_zip(str(archive))) == ['no/no0.png', 'yes/yes0.png']
  assert [w for w in warnings if 'not reading other folders; found No/' in w]


def test_a_synthetic_export_is_refused_as_real_data(tmp_path):
  # (its generated slices validated and tested a classifier, reported as real)
  images = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype(np.float32)
  for label in (0, 1):
    synthetic.write_synthetic(str(tmp_path / 'export'), images, label, {})
  for dataset in ('folder', 'br35h'):
    for where in (tmp_path / 'export', tmp_path):  # (yes/ and no/ one level down)
      with pytest.raises(ValueError, match='is a synthetic export .manifest.json., not real'):
        sources.check_location(_cfg(dataset=dataset, data_dir=str(where)))
  (tmp_path / 'export' / 'manifest.json').write_text('{"files": 4}')  # another tool's
  sources.check_location(_cfg(dataset='folder', data_dir=str(tmp_path / 'export')))


def test_a_link_into_the_other_class_folder_is_not_read_under_it(tmp_path, monkeypatch):
  _one_scan_per_class(tmp_path)
  (tmp_path / 'yes' / 'more').symlink_to(tmp_path / 'no')  # every healthy slice again, as tumour
  (tmp_path / 'yes' / 'one.png').symlink_to(tmp_path / 'no' / 'no0.png')
  (tmp_path / 'elsewhere').mkdir()
  _scan(3, 1, True).save(tmp_path / 'elsewhere' / 'e.png')
  (tmp_path / 'yes' / 'linked').symlink_to(tmp_path / 'elsewhere')  # a link out: followed
  warnings = _capture_warnings(monkeypatch)
  assert [(n, y) for n, y, _ in layout.iter_folder(str(tmp_path))] == [
      ('no/no0.png', 0), ('yes/linked/e.png', 1), ('yes/yes0.png', 1)]
  (message,) = warnings
  assert message.endswith('2 files under yes/ are links into another class folder, not read as '
                          'yes/: yes/more/no0.png, yes/one.png')


def test_a_link_to_a_file_of_its_own_class_folder_is_not_read_twice(tmp_path, monkeypatch):
  # (one file under two ids: a random split put it in training and in test)
  _one_scan_per_class(tmp_path)
  (tmp_path / 'yes' / 'a_link.png').symlink_to(tmp_path / 'yes' / 'yes0.png')  # sorts first
  (tmp_path / 'elsewhere').mkdir()
  _scan(3, 1, True).save(tmp_path / 'elsewhere' / 'e.png')
  for name in ('e1.png', 'e2.png'):  # two links to one file outside: its first link is read
    (tmp_path / 'yes' / name).symlink_to(tmp_path / 'elsewhere' / 'e.png')
  warnings = _capture_warnings(monkeypatch)
  assert [(n, y) for n, y, _ in layout.iter_folder(str(tmp_path))] == [
      ('no/no0.png', 0), ('yes/e1.png', 1), ('yes/yes0.png', 1)]
  (message,) = warnings
  assert message.endswith('2 files under yes/ are links to a file read there already, not read '
                          'twice: yes/a_link.png, yes/e2.png')


def test_a_fifo_named_config_json_is_not_waited_on(tmp_path):
  # (the run-folder check opened it with open(): listing the data waited for a writer)
  _one_scan_per_class(tmp_path)
  os.mkfifo(tmp_path / 'yes' / 'config.json')
  names = subprocess.run(
      [sys.executable, '-c', 'import sys; from brainjax.data import layout; '
       'print([n for n, _, _ in layout.iter_folder(sys.argv[1])])', str(tmp_path)],
      capture_output=True, text=True, timeout=30, check=True).stdout
  assert names.strip() == "['no/no0.png', 'yes/config.json', 'yes/yes0.png']"


def test_a_folder_that_cannot_be_listed_is_a_counted_skip(tmp_path, monkeypatch):
  # (Permissions cannot deny root, who runs CI: the listing fails as it would without them.)
  for label in ('yes', 'no'):
    (tmp_path / label / 'locked').mkdir(parents=True)
    _scan(3, 0, label == 'yes').save(tmp_path / label / f'{label}0.png')
    _scan(3, 1, label == 'yes').save(tmp_path / label / 'locked' / 'hidden.png')
  real_scandir = os.scandir

  def scandir(path='.'):
    if os.path.basename(os.fspath(path)) in ('locked', 'no'):
      raise PermissionError(13, 'Permission denied', os.fspath(path))
    return real_scandir(path)

  monkeypatch.setattr(os, 'scandir', scandir)
  real_open = os.open
  monkeypatch.setattr(os, 'open', lambda path, *args: (
      scandir(path) if os.path.basename(os.fspath(path)) == 'locked' else real_open(path, *args)))
  assert list(layout.walk_files(str(tmp_path / 'yes'))) == [
      str(tmp_path / 'yes' / 'yes0.png'), str(tmp_path / 'yes' / 'locked')]
  with pytest.raises(PermissionError):
    list(layout.walk_files(str(tmp_path / 'no')))
  warnings = _capture_warnings(monkeypatch)
  monkeypatch.setattr(os, 'scandir', lambda path='.': scandir(path) if os.path.basename(
      os.fspath(path)) == 'locked' else real_scandir(path))
  examples, _ = sources.load_source(_cfg(dataset='folder', data_dir=str(tmp_path),
                                         num_per_class=0), str(tmp_path / 'cache'))
  assert list(examples.ids) == ['no/no0.png', 'yes/yes0.png']
  (message,) = [w for w in warnings if 'Skipped' in w]
  assert 'Skipped 2 of 4' in message
  assert 'yes/locked (unreadable: cannot read file: Permission denied)' in message


def test_br35h_folder_with_a_broken_link_and_a_non_utf8_name(tmp_path, monkeypatch):
  folder = _fake_br35h(tmp_path / 'download')
  (folder / 'no' / 'gone.jpg').symlink_to(tmp_path / 'missing.jpg')
  odd = os.path.join(os.fsencode(folder / 'no'), b'caf\xe9.jpg')
  with open(odd, 'wb') as f:
    f.write((folder / 'no' / 'n0.jpg').read_bytes())
  warnings = _capture_warnings(monkeypatch)
  names = [name for name, _, _ in load_br35h_records(str(folder), str(tmp_path / 'tfds'))]
  assert 'no/caf\\xe9.jpg' in names and 'no/gone.jpg' not in names
  # The unreadable link is named, and counted among the files it was prepared from.
  assert any('gone.jpg' in w and 'cannot be read' in w for w in warnings)
  (summary,) = [w for w in warnings if w.startswith('Skipped')]
  assert summary.startswith(f'Skipped 1 of {len(names) + 1} Br35H files')


def test_zip_names_info_zip_stores_in_utf_8_without_the_flag_are_read_as_written(tmp_path):
  # zipfile decodes a name without the UTF-8 flag as cp437: 'yes/ñ.jpg' of `zip -r` on Linux
  # was 'yes/├▒.jpg' (its id, its place in the file-name order that num_per_class takes).
  raw = 'yes/ñ.jpg'.encode('utf-8')
  placeholder = b'yes/NN.jpg'  # (as long: the archive's offsets stay right)
  plain, with_field = tmp_path / 'plain.zip', tmp_path / 'field.zip'
  with zipfile.ZipFile(plain, 'w') as archive:
    for i, name in enumerate((placeholder.decode(), 'yes/b.jpg', 'no/c.jpg')):
      archive.writestr(name, b'member %d' % i)
  plain.write_bytes(plain.read_bytes().replace(placeholder, raw))  # bytes as Info-ZIP stores
  # Info-ZIP's Unicode Path field: the name in UTF-8, for the CRC-32 of the stored one.
  field = struct.pack('<B', 1) + struct.pack('<I', zlib.crc32(placeholder)) + raw
  with zipfile.ZipFile(with_field, 'w') as archive:
    info = zipfile.ZipInfo(placeholder.decode())
    info.extra = struct.pack('<HH', 0x7075, len(field)) + field
    archive.writestr(info, b'member 0')
    archive.writestr('no/c.jpg', b'member 1')
  assert [(n, label) for n, label, _ in layout.iter_zip(str(plain))] == [
      ('no/c.jpg', 0), ('yes/b.jpg', 1), ('yes/ñ.jpg', 1)]
  assert [n for n, _, _ in layout.iter_zip(str(with_field))] == ['no/c.jpg', 'yes/ñ.jpg']
  files = inputs.list_inputs(str(plain))
  assert [f.path for f in files] == ['no/c.jpg', 'yes/b.jpg', 'yes/ñ.jpg']
  with inputs.Reader() as reader:  # (the member is found by the name zipfile gives it)
    assert reader._zip_bytes(files[2]) == b'member 0'


def test_hidden_and_os_files_not_read_are_named(tmp_path, monkeypatch):
  # (a scan named .a.png, and .DS_Store, went unread without a word)
  root = tmp_path / 'data'
  root.mkdir()
  _one_scan_per_class(root)
  _scan(3, 1, True).save(root / 'yes' / '.hidden.png')
  (root / 'no' / '.DS_Store').write_bytes(b'\0')
  (root / 'no' / 'Thumbs.db').write_bytes(b'\0')
  archive = tmp_path / 'data.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for path in sorted(root.rglob('*')):
      z.write(path, os.path.relpath(path, root))
    z.writestr('__MACOSX/yes/._yes0.png', b'junk')
  infos = []
  monkeypatch.setattr(logging, 'info', lambda msg, *args: infos.append(msg % args))
  assert [n for n, _, _ in layout.iter_folder(str(root))] == ['no/no0.png', 'yes/yes0.png']
  assert [n for n, _, _ in layout.iter_zip(str(archive))] == ['no/no0.png', 'yes/yes0.png']
  assert [f.path for f in inputs.list_inputs(str(root))] == ['no/no0.png', 'yes/yes0.png']
  assert [m for m in infos if 'hidden or OS metadata' in m] == [
      f'{root}: not reading 2 hidden or OS metadata files: no/.DS_Store, no/Thumbs.db',
      f'{root}: not reading 1 hidden or OS metadata files: yes/.hidden.png',
      f'{archive}: not reading 4 hidden or OS metadata files: __MACOSX/yes/._yes0.png, '
      'no/.DS_Store, no/Thumbs.db, yes/.hidden.png',
      f'{root}: not reading 3 hidden or OS metadata files: no/.DS_Store, no/Thumbs.db, '
      'yes/.hidden.png']


def test_a_file_name_that_is_not_utf_8_is_read_alike_as_folder_and_br35h(tmp_path):
  # Br35H's builder recorded it with \x escapes, iter_folder with surrogates, which sort after
  # every letter: the two selected and split other files.
  download = _fake_br35h(tmp_path / 'download')
  latin1 = os.fsdecode(b'\xe9t\xe9.jpg')
  shutil.copyfile(download / 'yes' / 'y0.jpg', download / 'yes' / latin1)
  names = [n for n, _, _ in layout.iter_folder(str(download))]
  assert names == ['no/n0.jpg', 'no/n1.jpg', 'yes/\\xe9t\\xe9.jpg', 'yes/broken.jpg',
                   'yes/y0.jpg', 'yes/y1.jpg']
  records = load_br35h_records(str(download), str(tmp_path / 'tfds'))
  assert [r[0] for r in records] == names
