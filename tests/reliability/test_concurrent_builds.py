"""Dataset builds started twice, killed, or out of disk (data_pipelines/datasets/source.py):

- two builds into one data_dir at once (two build commands, two train.py runs started
  together): the second waits for the first and uses its build, no FileExistsError;
- the `incomplete.*` folder of a build that died is removed by the next build, but
  never that of a build still running (it holds the data_dir's lock);
- a full disk during a build is one line naming the data_dir and the free space, the
  partial build removed (simulated in process; for real through the build command
  under a file-size limit).

The waits are on events (a log line, a call), each under a generous ceiling.
"""

import logging
import os
import pathlib
import sys
import threading

import pytest
from absl import logging as absl_logging

from data_pipelines.datasets import reid_builder, source
from tests.reference import ceiling, reid_layouts, tiny_market

REPO = pathlib.Path(__file__).resolve().parents[2]

CEILING_S = 600  # for an event that, on a loaded machine, comes within seconds
WAITING = "another build into"  # the line a build waiting for the lock logs


@pytest.fixture
def download(tmp_path):
  reid_layouts.write_images(
    tmp_path / "download" / reid_layouts.MARKET_TOP, reid_layouts.MARKET_FILES
  )
  return tmp_path / "download"


class _LineEvent(logging.Handler):
  """Sets `event` when a log record holding `text` is emitted."""

  def __init__(self, text: str, event: threading.Event):
    super().__init__()
    self.text, self.event = text, event

  def emit(self, record: logging.LogRecord) -> None:
    if self.text in record.getMessage():
      self.event.set()


@pytest.fixture
def on_waiting():
  """An event set when a build logs that it waits for another one."""
  event = threading.Event()
  handler = _LineEvent(WAITING, event)
  logger = absl_logging.get_absl_logger()
  logger.addHandler(handler)
  yield event
  logger.removeHandler(handler)


def _start(name: str, target, errors: dict) -> threading.Thread:
  def run():
    try:
      target()
    except BaseException as e:  # noqa: BLE001 (reported by the test)
      errors[name] = e

  thread = threading.Thread(target=run, name=name, daemon=True)
  thread.start()
  return thread


def _incomplete(data_dir) -> list[str]:
  folder = data_dir / "market1501"
  if not folder.is_dir():
    return []
  return sorted(p.name for p in folder.iterdir() if p.name.startswith(source.INCOMPLETE_PREFIX))


def test_two_builds_at_once_end_with_the_one_build(tmp_path, download, monkeypatch, on_waiting):
  data_dir = tmp_path / "data"
  first_preparing = threading.Event()
  prepared_by = []
  real = reid_builder.ReidBuilder._download_and_prepare

  def prepare(self, *args, **kwargs):
    prepared_by.append(threading.current_thread().name)
    if threading.current_thread().name == "first":
      first_preparing.set()
      # The second build has started and reached the point where it waits for the
      # first (or, unguarded, prepares beside it) before the first one goes on.
      assert on_waiting.wait(CEILING_S)
    else:
      on_waiting.set()
    return real(self, *args, **kwargs)

  monkeypatch.setattr(reid_builder.ReidBuilder, "_download_and_prepare", prepare)
  errors = {}
  first = _start("first", lambda: source.build("market1501", data_dir, download), errors)
  assert first_preparing.wait(CEILING_S)
  second = _start("second", lambda: source.build("market1501", data_dir, download), errors)
  for thread in (first, second):
    thread.join(CEILING_S)
    assert not thread.is_alive()
  assert errors == {}
  assert prepared_by == ["first"]  # the second used the first one's build
  assert sorted(os.listdir(data_dir / "market1501")) == ["1.0.0"]
  assert len(source.load_source("market1501", "query", data_dir)) == 1


def test_a_dead_builds_partial_folder_is_removed_by_the_next(tmp_path, download):
  data_dir = tmp_path / "data"
  dead = data_dir / "market1501" / "incomplete.K1LLED_1.0.0"
  dead.mkdir(parents=True)
  (dead / "market1501-train.array_record-00000-of-00001").write_bytes(b"partial")
  other_version = data_dir / "market1501" / "incomplete.OTHER0_2.0.0"
  other_version.mkdir()
  source.build("market1501", data_dir, download)
  assert _incomplete(data_dir) == ["incomplete.OTHER0_2.0.0"]  # another version's: kept
  # A rebuild (--overwrite from another copy) leaves no partial folder either.
  changed = tmp_path / "changed"
  reid_layouts.write_images(
    changed / reid_layouts.MARKET_TOP,
    reid_layouts.MARKET_FILES + ("query/0002_c2s1_000100_00.jpg",),
  )
  source.build("market1501", data_dir, changed, overwrite=True)
  assert _incomplete(data_dir) == ["incomplete.OTHER0_2.0.0"]
  assert sorted(os.listdir(data_dir / "market1501")) == ["1.0.0", "incomplete.OTHER0_2.0.0"]


def test_a_live_builds_partial_folder_is_kept(tmp_path, download, on_waiting):
  data_dir = tmp_path / "data"
  live = data_dir / "market1501" / "incomplete.L1VE00_1.0.0"
  live.mkdir(parents=True)
  with source._build_lock(os.fspath(data_dir), "market1501"):  # the live build's hold
    errors = {}
    waiting = _start("next", lambda: source.build("market1501", data_dir, download), errors)
    assert on_waiting.wait(CEILING_S)
    assert live.is_dir()  # not touched while its builder runs
    live.rmdir()  # the live build ends (TFDS renames its folder into place)
  waiting.join(CEILING_S)
  assert not waiting.is_alive() and errors == {}
  assert source.get_builder("market1501", data_dir).is_prepared()


@pytest.mark.parametrize(
  "failure",
  [
    RuntimeError(
      'Failed to finalize writing of split "train": write() failed: No space left on device'
    ),
    OSError(28, "No space left on device"),
  ],
)
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, download, monkeypatch, failure):
  data_dir = tmp_path / "data"

  def full(self, *args, **kwargs):
    (data_dir / "market1501" / "incomplete.FULL00_1.0.0").mkdir(parents=True)
    raise failure

  monkeypatch.setattr(reid_builder.ReidBuilder, "_download_and_prepare", full)
  with pytest.raises(source.DatasetWriteError) as e:
    source.build("market1501", data_dir, download)
  message = str(e.value)
  assert "\n" not in message and f"building market1501 into {data_dir} failed" in message
  assert "No space left on device" in message and " free there" in message
  assert not data_dir.exists()  # the partial build and the folders made for it removed


def test_the_build_command_out_of_room_is_one_error_line(tmp_path):
  """The real failure, through the command: a file-size limit (`ulimit -f`, 8 KB) stops
  the writing of the first split as a full disk does."""
  tiny_market.write_market(tmp_path / "download")
  data_dir = tmp_path / "data"

  proc = ceiling.run(
    [  # bash's `ulimit -f` counts 1 KB blocks
      "bash",
      "-c",
      'ulimit -f 8 && exec "$@"',
      "bash",
      sys.executable,
      "-m",
      "data_pipelines.datasets.build",
      f"--manual_dir={tmp_path / 'download'}",
      f"--data_dir={data_dir}",
    ],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
    ceiling=ceiling.LONG,
  )
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
  assert len(errors) == 1 and f"building market1501 into {data_dir} failed" in errors[0]
  assert "File too large" in errors[0] and "free there" in errors[0]
  assert not data_dir.exists()
