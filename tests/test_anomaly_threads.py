"""The rules' thread-parallel pieces give the same numbers with one thread as with many."""
import numpy as np
import pytest

from brainjax import threads
from brainjax.anomaly import dbscan, giaem, kmeans_global, kmeans_image
from brainjax.anomaly import synthetic_maps


def test_thread_map_keeps_order_and_raises():
  assert threads.thread_map(lambda x: x * x, range(7)) == [x * x for x in range(7)]
  assert threads.thread_map(str, []) == []
  assert 1 <= threads.num_workers() <= threads.MAX_WORKERS

  def fail(x):
    if x == 3:
      raise ValueError('three')
    return x

  with pytest.raises(ValueError, match='three'):
    threads.thread_map(fail, range(5))


def test_row_chunks_cover_every_row_once(monkeypatch):
  monkeypatch.setattr(threads, 'CHUNK_ELEMENTS', 100)
  chunks = threads.row_chunks(23, 30)  # 3 rows of 30 values per chunk
  assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15),
                                                 (15, 18), (18, 21), (21, 23)]
  assert [(c.start, c.stop) for c in threads.row_chunks(2, 1000)] == [(0, 1), (1, 2)]


def _all_rules(errors):
  thresholds = (np.arange(10) / 10).astype(np.float32)
  return dict(
      giaem=giaem.giaem_grid_scores(errors, thresholds),
      dbscan=dbscan.dbscan_grid_scores(errors, [0.5, 0.7], [0.04, 0.08], [3, 6]),
      kmeans=kmeans_image.kmeans_image_clusters(errors)[1],
      global_kmeans=kmeans_global.global_kmeans_grid_scores(errors, thresholds).scores)


def test_rules_do_not_depend_on_the_thread_count(monkeypatch):
  errors, _, _ = synthetic_maps.synthetic_error_maps(40, size=32, seed=3)
  # Small chunks, so every rule splits its work into many pieces.
  monkeypatch.setattr(threads, 'CHUNK_ELEMENTS', 3 * 32 * 32)
  monkeypatch.setattr(dbscan, '_MAX_CANDIDATES_PER_CHUNK', 500)
  monkeypatch.setattr(threads, 'num_workers', lambda: 1)
  serial = _all_rules(errors)
  monkeypatch.setattr(threads, 'num_workers', lambda: 4)
  threaded = _all_rules(errors)
  for rule, values in serial.items():
    assert np.asarray(values).any(), rule  # not a trivial all-zero answer
    np.testing.assert_array_equal(threaded[rule], values, err_msg=rule)


def test_memory_is_the_lower_of_the_machine_s_and_its_cgroups_limits(tmp_path, monkeypatch):
  root, proc, mountinfo = tmp_path / 'cgroup', tmp_path / 'proc_self_cgroup', tmp_path / 'mounts'
  monkeypatch.setattr(threads, 'MOUNTINFO', str(mountinfo))
  monkeypatch.setattr(threads, 'PROC_CGROUP', str(proc))
  # (no mountinfo: the usual places)
  assert threads._cgroup_mounts() == list(threads._USUAL_MOUNTS)
  mountinfo.write_text(
      f'31 23 0:28 / {root} rw,relatime shared:9 - cgroup2 cgroup2 rw\n'
      f'35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,cpu,memory\n'
      f'36 31 0:33 / {root}/pids rw,relatime - cgroup cgroup rw,pids\n')
  physical = threads.memory_bytes()  # (no cgroup files)
  assert physical > 2**31  # (any machine that runs the suite)

  def limit(path, text):
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text + '\n')

  limit('memory.max', 'max')  # cgroup v2 without a limit
  limit('memory/memory.limit_in_bytes', '9223372036854771712')  # cgroup v1 without a limit
  limit('pids/memory.limit_in_bytes', str(2**20))  # (not the memory hierarchy)
  assert threads.memory_bytes() == physical
  # A systemd unit's or a job's group, below the mount's root: its limit, or a parent's, binds.
  proc.write_text('0::/jobs/job1\n')
  limit('jobs/memory.max', str(3 * 2**30))
  limit('jobs/job1/memory.max', 'max')
  assert threads.memory_bytes() == 3 * 2**30
  # A hierarchy mounted elsewhere (a space in its path), showing it from /jobs down.
  elsewhere = tmp_path / 'my mounts' / 'v2'
  mountinfo.write_text(
      f'31 23 0:28 /jobs {str(elsewhere).replace(" ", chr(92) + "040")} rw - cgroup2 none rw\n')
  (elsewhere / 'job1').mkdir(parents=True)
  (elsewhere / 'job1' / 'memory.max').write_text(f'{5 * 2**29}\n')
  assert threads.memory_bytes() == 5 * 2**29
  mountinfo.write_text(f'35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,memory\n')
  proc.write_text('5:memory:/docker/abc\n0::/\n')
  limit('memory/docker/abc/memory.limit_in_bytes', str(2**30))
  assert threads.memory_bytes() == 2**30
  with pytest.raises(ValueError, match='need 2 GiB, more than the 1 GiB of memory this process'):
    threads.check_fits_in_memory(2**31, 'these settings would', 'lower them')
  threads.check_fits_in_memory(2**29, 'these settings would', 'lower them')


def test_num_workers_is_capped_on_a_big_machine(monkeypatch):
  monkeypatch.setattr(threads.os, 'sched_getaffinity', lambda pid: set(range(64)))
  assert threads.num_workers() == threads.MAX_WORKERS


def test_a_container_s_own_limit_at_the_mount_root_binds(tmp_path, monkeypatch):
  root, proc, mountinfo = tmp_path / 'cgroup', tmp_path / 'proc_self_cgroup', tmp_path / 'mounts'
  monkeypatch.setattr(threads, 'MOUNTINFO', str(mountinfo))
  monkeypatch.setattr(threads, 'PROC_CGROUP', str(proc))
  mountinfo.write_text(f'31 23 0:28 / {root} rw,relatime - cgroup2 cgroup2 rw\n')
  proc.write_text('0::/\n')  # (a container with its own cgroup namespace)
  root.mkdir()
  (root / 'memory.max').write_text(f'{2**30}\n')
  assert threads.memory_bytes() == 2**30
