"""A Ctrl-C that always stops the run.

Python raises KeyboardInterrupt in whatever Python code runs when SIGINT arrives. JAX
frees XLA's buffers from a garbage-collection callback (`gc.callbacks`) at every
collection, and an exception raised inside a gc callback is printed as "Exception
ignored" and dropped: a Ctrl-C landing there was lost, and training went on. The
handler below defers such an interrupt until the callback has returned.
"""
import _thread
import gc
import signal
import threading
import types
from typing import Optional

# Long enough for a callback to return, short against a person's reaction.
_RETRY_SECS = 0.01


def _in_gc_callback(frame: Optional[types.FrameType]) -> bool:
  """Whether `frame` runs in a gc callback (or in code a callback called)."""
  codes = {getattr(callback, '__code__', None) for callback in gc.callbacks}
  while frame is not None:
    if frame.f_code in codes:
      return True
    frame = frame.f_back
  return False


def _on_sigint(signum, frame):
  del signum
  if _in_gc_callback(frame):
    # Raised again from another thread a moment later, by then (most likely) outside the
    # callback; if not, this handler defers it again.
    threading.Timer(_RETRY_SECS, _thread.interrupt_main).start()
    return
  raise KeyboardInterrupt


def stop_on_ctrl_c() -> None:
  """Makes SIGINT raise KeyboardInterrupt in the main thread's own code, never only inside
  a gc callback (call from the main thread, as `signal.signal` requires)."""
  signal.signal(signal.SIGINT, _on_sigint)
