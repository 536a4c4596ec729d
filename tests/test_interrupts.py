"""Ctrl-C stops the run even when it lands in a garbage-collection callback."""
import gc
import os
import signal
import time

import pytest

from brainjax import interrupts


@pytest.fixture
def ctrl_c_handler():
  previous = signal.getsignal(signal.SIGINT)
  interrupts.stop_on_ctrl_c()
  yield
  signal.signal(signal.SIGINT, previous)


def _wait_for_interrupt(seconds=2.0):
  end = time.monotonic() + seconds
  while time.monotonic() < end:
    time.sleep(0.001)


def test_a_ctrl_c_inside_a_gc_callback_interrupts_after_it(ctrl_c_handler):
  calls = []

  def press_ctrl_c(phase, info):  # as JAX's callback runs at every collection
    del info
    if phase == 'start' and not calls:
      calls.append(phase)
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.01)  # Python handles the signal here, inside the callback

  gc.callbacks.append(press_ctrl_c)
  try:
    with pytest.raises(KeyboardInterrupt):
      try:
        gc.collect()  # (with Python's own handler the interrupt is dropped here)
      finally:
        gc.callbacks.remove(press_ctrl_c)
      _wait_for_interrupt()
  finally:
    _wait_for_interrupt(0.05)  # (no deferred interrupt left to land after the test)
  assert calls == ['start']


def test_a_ctrl_c_elsewhere_interrupts_at_once(ctrl_c_handler):
  with pytest.raises(KeyboardInterrupt):
    os.kill(os.getpid(), signal.SIGINT)
    _wait_for_interrupt()
