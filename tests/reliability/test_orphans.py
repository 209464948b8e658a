"""No process outlives the main one: worker processes (and the multiprocessing resource
tracker) die with it on SIGKILL (`data_pipelines/parent_watch.py`), and on SIGTERM.

The fast test runs a small script that starts a `spawn` worker (as grain does) and a
shared-memory block (which starts the resource tracker), then SIGKILLs itself; the
control without the watchdog shows the worker would otherwise survive. The slow test
kills `train.py` with `input.num_workers=2` (grain workers) after its first checkpoint.
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tests.reference import tiny_synthetic_run as run

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""\
  import multiprocessing, os, signal, sys, time
  from multiprocessing import shared_memory

  from data_pipelines import parent_watch


  def worker(watch):
    if watch:
      parent_watch.die_with_parent(poll_seconds=0.1)
    time.sleep(300)


  if __name__ == "__main__":
    shm = shared_memory.SharedMemory(create=True, size=4096)  # starts the resource tracker
    p = multiprocessing.get_context("spawn").Process(target=worker, args=(sys.argv[1] == "1",))
    p.start()
    time.sleep(2)  # the worker is up (its watchdog started)
    print("ready", flush=True)
    time.sleep(300)
""")


def descendants(pid: int) -> list[psutil.Process]:
  return psutil.Process(pid).children(recursive=True)


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
  _, alive = psutil.wait_procs(processes, timeout=timeout)
  return alive


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
    assert parent.stdout.readline().strip() == "ready"
    children = descendants(parent.pid)
    names = sorted(" ".join(c.cmdline()) for c in children)
    assert len(children) == 2, names  # the worker and the resource tracker
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    alive = wait_gone(children, timeout=10 if watch else 2)
    if watch:
      assert alive == [], [" ".join(p.cmdline()) for p in alive]
    else:  # control: without the watchdog the worker (and so the tracker) lives on
      assert len(alive) == 2
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
  import multiprocessing, sys, time
  from multiprocessing import shared_memory

  from data_pipelines import grain_workers


  def worker(queue):
    grain_workers.worker_init(0, 1)
    shm = shared_memory.SharedMemory(create=True, size=4096)  # as grain's batches
    queue.put(shm.name)
    time.sleep(300)


  if __name__ == "__main__":
    grain_workers.start_resource_tracker()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    context.Process(target=worker, args=(queue,), daemon=True).start()  # as grain's
    print(queue.get(timeout=120), flush=True)
    try:
      time.sleep(300)
    except KeyboardInterrupt:
      sys.exit(130)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="reads the process tree and /dev/shm")
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_a_terminal_signal_to_the_whole_group_leaves_nothing(tmp_path, sig):
  """A closed terminal (SIGHUP) or Ctrl-C (SIGINT) reaches every process of the group:
  the workers leave the decision to the main process (no KeyboardInterrupt traceback
  each) and the resource tracker outlives them to unlink their shared memory."""
  script = tmp_path / "group.py"
  script.write_text(GROUP_SCRIPT)
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
    name = parent.stdout.readline().strip()
    assert name and os.path.exists(f"/dev/shm/{name}")
    children = descendants(parent.pid)
    os.killpg(parent.pid, sig)
    parent.wait(timeout=30)
    alive = wait_gone(children, timeout=15)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
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
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.monotonic() + 600
    while not (workdir / "checkpoints" / "2").is_dir():
      assert proc.poll() is None, "train.py ended early"
      assert time.monotonic() < deadline
      time.sleep(0.1)
    children = descendants(proc.pid)
    # Two grain workers and the resource tracker (at least).
    assert len(children) >= 3, [" ".join(c.cmdline()) for c in children]
    proc.send_signal(sig)
    proc.wait(timeout=300)
    alive = wait_gone(children, timeout=15)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
  finally:
    if proc.poll() is None:
      for p in descendants(proc.pid):
        p.kill()
      proc.kill()
