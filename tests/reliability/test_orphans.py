"""No process outlives the main one: worker processes (and the multiprocessing resource
tracker) die with it on SIGKILL (`data_pipelines/parent_watch.py`), and on SIGTERM.

The fast test runs a small script that starts a `spawn` worker (as grain does) and a
shared-memory block (which starts the resource tracker), then SIGKILLs itself; the
control without the watchdog shows the worker would otherwise survive. The slow test
kills `train.py` with `input.num_workers=2` (grain workers) after its first checkpoint.
"""

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.reference import ceiling
from tests.reference import tiny_synthetic_run as run

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""\
  import multiprocessing, os, signal, sys, time
  from multiprocessing import shared_memory

  from data_pipelines import parent_watch


  def worker(watch, started):
    if watch:
      parent_watch.die_with_parent(poll_seconds=0.1)
    started.send("up")
    time.sleep(3600)


  if __name__ == "__main__":
    shm = shared_memory.SharedMemory(create=True, size=4096)  # starts the resource tracker
    context = multiprocessing.get_context("spawn")
    started_r, started_w = context.Pipe(duplex=False)
    p = context.Process(target=worker, args=(sys.argv[1] == "1", started_w))
    p.start()
    started_r.recv()  # the worker is up (its watchdog started)
    print("ready", flush=True)
    time.sleep(3600)
""")


def descendants(pid: int) -> list[psutil.Process]:
  return psutil.Process(pid).children(recursive=True)


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
  _, alive = psutil.wait_procs(processes, timeout=timeout)
  return alive


def still_alive(processes: list[psutil.Process]) -> list[str]:
  """Waits (ceiling: ceiling.SHORT) for `processes` to end; returns those still running,
  each with its signal state, after a SIGABRT that makes each print its stacks on its
  stderr (the test's output, or the pipe of the parent's stderr)."""
  alive = wait_gone(processes, timeout=ceiling.SHORT)
  described = [f"{' '.join(p.cmdline())}\n{ceiling.signal_state(p.pid)}" for p in alive]
  for p in alive:
    p.send_signal(signal.SIGABRT)
  wait_gone(alive, timeout=30)
  return described


@contextlib.contextmanager
def launcher_ignoring(*signals: signal.Signals):
  """This (test) process ignores `signals` while it starts a child, which inherits that.

  A non-interactive shell starts `cmd &` with SIGINT (and SIGQUIT) ignored, `nohup` with
  SIGHUP ignored, and so every process the tests start then: the test runs with them
  ignored every time instead of depending on how pytest was started."""
  previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def env() -> dict[str, str]:
  return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.skipif(sys.platform != "linux", reason="reads the process tree (Linux)")
@pytest.mark.parametrize("watch", [True, False])
def test_worker_dies_with_a_killed_parent(tmp_path, watch):
  script = tmp_path / "parent.py"
  script.write_text(SCRIPT)
  parent = subprocess.Popen(
    [sys.executable, str(script), "1" if watch else "0"],
    cwd=ROOT,
    env=env(),
    stdout=subprocess.PIPE,
    text=True,
  )
  children = []
  try:
    assert ceiling.readline(parent, "the parent's 'ready' (its worker started)") == "ready"
    children = descendants(parent.pid)
    names = sorted(" ".join(c.cmdline()) for c in children)
    assert len(children) == 2, names  # the worker and the resource tracker
    parent.send_signal(signal.SIGKILL)
    ceiling.wait(parent, "the SIGKILL-ed parent")
    if watch:
      assert still_alive(children) == []
    else:  # control: without the watchdog the worker (and so the tracker) lives on
      assert len(wait_gone(children, timeout=2)) == 2  # the watchdog's polls: 0.1 s
  finally:
    parent.kill()
    # The worker first: the tracker then exits by itself, freeing the shared memory.
    for p in children:
      try:
        if "resource_tracker" not in " ".join(p.cmdline()):
          p.kill()
      except psutil.NoSuchProcess:
        pass
    for p in wait_gone(children, timeout=10):
      p.kill()


GROUP_SCRIPT = textwrap.dedent("""\
  import multiprocessing, signal, sys, time
  from multiprocessing import shared_memory

  from data_pipelines import grain_workers


  def worker(queue):
    grain_workers.worker_init(0, 1)
    shm = shared_memory.SharedMemory(create=True, size=4096)  # as grain's batches
    queue.put(shm.name)
    time.sleep(3600)


  if __name__ == "__main__":
    # The dispositions of a terminal's foreground job; the test starts this script with
    # Ctrl-C and hang-up ignored, as a test runner started by `cmd &` in a script has them.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:  # before "ready": Ctrl-C right after it must not escape as a traceback
      grain_workers.start_resource_tracker()
      context = multiprocessing.get_context("spawn")
      queue = context.Queue()
      context.Process(target=worker, args=(queue,), daemon=True).start()  # as grain's
      print(queue.get(timeout=600), flush=True)
      time.sleep(3600)
    except KeyboardInterrupt:
      sys.exit(130)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="reads the process tree and /dev/shm")
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_a_terminal_signal_to_the_whole_group_leaves_nothing(tmp_path, sig):
  """A closed terminal (SIGHUP) or Ctrl-C (SIGINT) reaches every process of the group:
  the workers leave the decision to the main process (no KeyboardInterrupt traceback
  each) and the resource tracker outlives them to unlink their shared memory.

  The script sets a terminal job's dispositions itself: inheriting an ignored SIGINT from
  a backgrounded test runner, it slept through the Ctrl-C (issue 17)."""
  script = tmp_path / "group.py"
  script.write_text(GROUP_SCRIPT)
  with launcher_ignoring(signal.SIGINT, signal.SIGHUP):
    parent = subprocess.Popen(
      [sys.executable, str(script)],
      cwd=ROOT,
      env=env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      start_new_session=True,
    )
  children = []
  try:
    name = ceiling.readline(parent, "the worker's shared-memory name")
    assert name and os.path.exists(f"/dev/shm/{name}")
    children = descendants(parent.pid)
    os.killpg(parent.pid, sig)
    ceiling.wait(parent, f"the parent after {signal.Signals(sig).name} to its group")
    alive = still_alive(children)
    assert alive == [], (alive, parent.stderr.read())
    assert not os.path.exists(f"/dev/shm/{name}")
    assert "Traceback" not in parent.stderr.read()
  finally:
    for p in [*children, psutil.Process(parent.pid)] if parent.poll() is None else children:
      try:
        p.kill()
      except psutil.NoSuchProcess:
        pass


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads the process tree (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_train_py_leaves_no_process_behind(data_root, tmp_path, sig):
  config_file = run.write_config_file(tmp_path / "tiny_run.py", data_root)
  workdir = tmp_path / "w"
  log = tmp_path / "stderr.txt"
  proc = subprocess.Popen(
    [
      sys.executable,
      "train.py",
      f"--config={config_file}",
      f"--workdir={workdir}",
      "--config.input.num_workers=2",
      "--config.train.num_epochs=500",
    ],
    cwd=ROOT,
    env=env(),
    stdout=subprocess.DEVNULL,
    stderr=log.open("w"),  # a file: a pipe nobody reads would fill up and block train.py
  )
  try:
    ceiling.wait_until(
      lambda: (workdir / "checkpoints" / "2").is_dir() or proc.poll() is not None,
      f"train.py's checkpoint 2 (its stderr: {log})",
      ceiling.LONG,
      poll=0.1,
    )
    assert proc.poll() is None, "train.py ended early"
    children = descendants(proc.pid)
    # Two grain workers and the resource tracker (at least).
    assert len(children) >= 3, [" ".join(c.cmdline()) for c in children]
    proc.send_signal(sig)
    ceiling.wait(proc, f"train.py after {signal.Signals(sig).name}", output=log)
    assert still_alive(children) == []
  finally:
    if proc.poll() is None:
      for p in descendants(proc.pid):
        p.kill()
      proc.kill()
