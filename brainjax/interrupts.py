"""A Ctrl-C that always stops the run.

Python raises KeyboardInterrupt in whatever Python code runs when SIGINT arrives. Where that
code's exceptions cannot propagate (a garbage-collection callback, such as the one JAX frees
XLA's buffers with at every collection; a __del__; a weakref callback), Python prints it as
"Exception ignored" and drops it: the Ctrl-C was lost, and training went on. The hook below
sends such an interrupt again, a moment later, to the main thread.
"""
import signal
import threading

# Long enough for the callback to return, short against a person's reaction.
_RESEND_AFTER_SECS = 0.01


def _send_ctrl_c_to_main_thread():
  # A signal, not _thread.interrupt_main: it also wakes a main thread blocked in a wait.
  signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def resend_dropped_ctrl_c(previous_hook):
  """A sys.unraisablehook that sends a dropped KeyboardInterrupt again as SIGINT (which
  lands in a callback again only by chance, and is then sent again); it passes every other
  exception to previous_hook."""
  def hook(unraisable):
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
      timer = threading.Timer(_RESEND_AFTER_SECS, _send_ctrl_c_to_main_thread)
      timer.daemon = True  # (one still waiting when the run ends does not hold its exit)
      timer.start()
    else:
      previous_hook(unraisable)
  return hook
