"""End-to-end tests of `python train.py` in subprocesses: exact resume after SIGKILL and
SIGTERM, NaN stop, and the CPU demo (`configs/demo.py`).

The tiny run (tests/reference/tiny_synthetic_run.py, 10 epochs = 20 steps, a checkpoint
every 2 steps) is killed after a checkpoint at a random step, restarted with the same
command, and must end with the parameters of an uninterrupted run (<= 1e-6) having
trained on exactly the sampler's batch sequence: the resume tests run `train.py` through
tests/reference/train_with_batch_log.py, which logs every step's batch indices.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.training import train_loop
from tests.reference import ceiling
from tests.reference import tiny_synthetic_run as run
from tests.reference.batch_index_log import BatchIndexLog, read_batch_index_log
from tests.reference.console_lines import third_party_lines

ROOT = pathlib.Path(__file__).resolve().parent.parent
NUM_EPOCHS = 10
TOTAL_STEPS = NUM_EPOCHS * run.STEPS_PER_EPOCH
EPOCH_FLAG = f"--config.train.num_epochs={NUM_EPOCHS}"


def subprocess_env(simulated_devices: bool = True) -> dict[str, str]:
  env = dict(os.environ)
  env["JAX_COMPILATION_CACHE_DIR"] = str(ROOT / ".cache" / "jax")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  if not simulated_devices:
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
  return env


def run_train(*args, **kwargs) -> subprocess.CompletedProcess:
  """Runs `train_command(*args, **kwargs)` from the repository root (simulated devices,
  output captured, under a ceiling that prints its stacks when hit)."""
  return ceiling.run(
    train_command(*args, **kwargs),
    cwd=ROOT,
    env=subprocess_env(),
    ceiling=ceiling.LONG,
  )


def train_command(config_file, workdir, *extra, log_batches: bool = False) -> list[str]:
  """`python train.py ...`; with `log_batches`, through tests/reference/train_with_batch_log.py
  (the same program, logging each step's batch indices in WORKDIR/batch_indices)."""
  program = ["-m", "tests.reference.train_with_batch_log"] if log_batches else ["train.py"]
  return [sys.executable, *program, f"--config={config_file}", f"--workdir={workdir}", *extra]


def checkpoint_steps(workdir) -> list[int]:
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def config_file(data_root, tmp_path_factory):
  return run.write_config_file(tmp_path_factory.mktemp("cfg") / "tiny_run.py", data_root)


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
  """Uninterrupted run, in process (same devices and code as the subprocesses):
  (final variables, {step: record indices})."""
  workdir = tmp_path_factory.mktemp("reference")
  c = run.config(data_root)
  c.train.num_epochs = NUM_EPOCHS
  train_loop.train_and_evaluate(c, workdir, on_step=BatchIndexLog(workdir))
  _, variables = checkpoint_restore.restore_variables(workdir)
  log = read_batch_index_log(workdir)
  train = source_lib.load_source("market1501", "train", str(data_root / "tfds"))
  person_ids = np.array([train[i]["person_id"] for i in range(len(train))])
  expected = run.expected_batches(person_ids, TOTAL_STEPS)
  assert [log[s] for s in range(1, TOTAL_STEPS + 1)] == expected
  return variables, log


def interrupt_and_resume(config_file, workdir, sig: int, at_step: int):
  """Starts train.py, sends `sig` once checkpoint `at_step` exists, then reruns it.

  Returns:
    (exit code of the interrupted run, checkpoint steps after it, the rerun's result).
  """
  proc = subprocess.Popen(
    train_command(config_file, workdir, EPOCH_FLAG, log_batches=True),
    cwd=ROOT,
    env=subprocess_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  ceiling.wait_until(
    lambda: at_step in checkpoint_steps(workdir) or proc.poll() is not None,
    f"checkpoint {at_step} of train.py",
    ceiling.LONG,
  )
  assert proc.poll() is None, f"train.py ended before checkpoint {at_step}:\n{proc.stdout.read()}"
  proc.send_signal(sig)
  output, _ = ceiling.communicate(proc, f"train.py after signal {sig}", ceiling.LONG)
  interrupted = (proc.returncode, checkpoint_steps(workdir), output)
  rerun = run_train(config_file, workdir, EPOCH_FLAG, log_batches=True)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  return interrupted, rerun


def assert_same_as_reference(workdir, reference):
  expected_vars, expected_log = reference
  _, variables = checkpoint_restore.restore_variables(workdir)
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), variables, expected_vars)
  assert max(jax.tree.leaves(diffs)) <= 1e-6
  # The batch each step finally trained on (the last line of a step wins: steps after
  # the last checkpoint of a killed run are redone) is the uninterrupted sequence.
  assert read_batch_index_log(workdir) == expected_log


def interrupt_step() -> int:
  """A random even step to interrupt at (each run covers another one), printed so that
  a failure's captured output names it and the run can be repeated at that step."""
  at_step = int(np.random.default_rng().choice(np.arange(2, TOTAL_STEPS - 4, 2)))
  print(f"interrupting at step {at_step}")
  return at_step


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(config_file, reference, tmp_path):
  at_step = interrupt_step()
  (code, steps, output), _ = interrupt_and_resume(config_file, tmp_path, signal.SIGKILL, at_step)
  assert code == -signal.SIGKILL, output
  assert TOTAL_STEPS not in steps, f"killed after the end (checkpoint {at_step}): {steps}"
  assert_same_as_reference(tmp_path, reference)


@pytest.mark.slow
def test_resume_after_sigterm_is_exact(config_file, reference, tmp_path):
  at_step = interrupt_step()
  (code, steps, output), _ = interrupt_and_resume(config_file, tmp_path, signal.SIGTERM, at_step)
  assert code == 128 + signal.SIGTERM, output
  assert "Stopped by signal" in output
  stopped_at = max(steps)
  assert at_step <= stopped_at < TOTAL_STEPS
  # A clean save at the signal: no step ran past the last checkpoint.
  log_lines = (tmp_path / "batch_indices" / "process_0.jsonl").read_text().splitlines()
  first_run = [json.loads(line)["step"] for line in log_lines][:stopped_at]
  assert first_run == list(range(1, stopped_at + 1))
  assert len(log_lines) == TOTAL_STEPS  # every step exactly once over both runs
  assert_same_as_reference(tmp_path, reference)


def test_nan_loss_stops_with_a_message(config_file, tmp_path):
  result = run_train(config_file, tmp_path, "--config.optim.base_lr=1e30")
  assert result.returncode == 1
  # The update of step 1 overflows the parameters: caught before anything is saved.
  assert re.search(r"ERROR: \w+ is (nan|inf) at step 1\b", result.stderr), result.stderr[-3000:]
  assert "no checkpoint was saved" in result.stderr
  assert checkpoint_steps(tmp_path) == []


@pytest.mark.slow  # a whole train.py run; its eval.py twin (tests/test_eval.py) is default
def test_plain_run_prints_only_our_lines(config_file, tmp_path):
  """One epoch (a checkpoint, the final evaluation): the run card, progress, table and
  log lines of the project, nothing of orbax, tensorflow_datasets, jax, absl..."""
  result = run_train(config_file, tmp_path, "--config.train.num_epochs=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Run card" in result.stdout and "mAP" in result.stdout
  assert checkpoint_steps(tmp_path) == [run.STEPS_PER_EPOCH]
  assert third_party_lines(result.stdout + result.stderr) == []


@pytest.mark.slow
def test_demo_reaches_its_targets(tmp_path):
  """`python train.py --config=configs/demo.py` (1 CPU device, as a user runs it)."""
  start = time.monotonic()
  result = ceiling.run(
    train_command("configs/demo.py", tmp_path),
    cwd=ROOT,
    env=subprocess_env(simulated_devices=False),
    ceiling=ceiling.LONG,
  )
  elapsed = time.monotonic() - start
  assert result.returncode == 0, result.stderr[-3000:]
  results = tmp_path / "eval" / (tmp_path / "eval" / "latest").read_text().strip()
  baselines = json.loads((results / "baselines.json").read_text())
  trained = baselines["trained"]["mAP"]
  print(f"demo: {elapsed:.0f} s\n{baselines['table']}")
  assert trained >= 0.75
  assert trained - baselines["untrained"]["mAP"] >= 0.3
  assert trained - baselines["colour_histogram"]["mAP"] >= 0.3
  assert baselines["table"] in result.stdout
  assert (results / "metrics.json").exists()
  assert (results / "ranked_list.png").exists()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(config_file, data_root, tmp_path):
  """`train.py` as two processes x 2 CPU devices joined by jax.distributed, the multi-host
  path (data prepared by process 0 behind a barrier, per-process batch slices, orbax
  multi-process checkpoints, the agreed stop check, evaluation), against a 1-process
  4-device run of the same config: the same global batches at every step, the same
  parameters after the first checkpoint (step 2), a checkpoint written by 2 processes
  that reads back in this one, and a run that resumes from it on 1 process.

  Parameters are compared at step 2 only: the two runs sum across devices in another
  order (4e-6 apart in the gradient norm at step 1), and from step 3, at full learning
  rate, batch-hard triplet mining on this tiny random network amplifies that into other
  hardest pairs (gradient norm 354 vs 357 at step 4, 720 vs 753 at step 8; parameters
  6e-2 apart at step 20). Adam's epsilon is raised to 1e-3 for both runs: with 1e-8,
  parameters whose gradient is ~0 take a +-lr first step decided by the sign of float
  noise (1.8e-5 apart at step 2).
  """
  eps_flag = "--config.optim.eps=1e-3"
  reference_dir = tmp_path / "one_process"
  c = run.config(data_root)
  c.train.num_epochs = NUM_EPOCHS
  c.optim.eps = 1e-3
  train_loop.train_and_evaluate(c, reference_dir, on_step=BatchIndexLog(reference_dir))

  workdir = tmp_path / "two_processes"
  port = _free_port()
  procs, logs = [], []
  for process_id in range(2):
    env = subprocess_env(simulated_devices=False)
    env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count=2".strip()
    env.update(
      JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
      JAX_NUM_PROCESSES="2",
      JAX_PROCESS_ID=str(process_id),
    )
    # Into files: a process blocked on a full pipe would stall the other at a barrier.
    logs.append(tmp_path / f"process_{process_id}.log")
    with open(logs[-1], "w") as log:
      procs.append(
        subprocess.Popen(
          train_command(config_file, workdir, EPOCH_FLAG, eps_flag, log_batches=True),
          cwd=ROOT,
          env=env,
          stdout=log,
          stderr=subprocess.STDOUT,
        )
      )
  for proc, log in zip(procs, logs, strict=True):
    ceiling.wait(proc, f"train.py process writing {log}", ceiling.LONG, output=log)
  for proc, log in zip(procs, logs, strict=True):
    assert proc.returncode == 0, log.read_text()[-4000:]

  # Read back in this single process (4 devices): a checkpoint written by 2 processes.
  _, variables = checkpoint_restore.restore_variables(workdir, step=2)
  _, expected = checkpoint_restore.restore_variables(reference_dir, step=2)
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), variables, expected)
  scales = jax.tree.map(lambda b: float(np.max(np.abs(b))), expected)
  # Parameters: the step-2 update is ~1.8e-4 (warm-up learning rate); 2e-6 is ~1% of it
  # (measured 6e-7). Running statistics: relative (measured 5e-6 of a variance of 2.5).
  assert max(jax.tree.leaves(diffs["params"])) <= 2e-6, diffs["params"]
  rel_stats = jax.tree.map(
    lambda d, s: d / max(s, 1.0), diffs["batch_stats"], scales["batch_stats"]
  )
  assert max(jax.tree.leaves(rel_stats)) <= 2e-5, rel_stats
  checkpoint_restore.restore_variables(workdir)  # the last one reads back too
  # Process i trained on rows block i of every global batch: together, the reference's.
  logs = [read_batch_index_log(workdir, process=p) for p in range(2)]
  expected_log = read_batch_index_log(reference_dir)
  assert sorted(logs[0]) == list(range(1, TOTAL_STEPS + 1)) == sorted(logs[1])
  assert {s: logs[0][s] + logs[1][s] for s in logs[0]} == expected_log
  assert checkpoint_steps(workdir)[-1] == TOTAL_STEPS
  final = f"step_{TOTAL_STEPS}"
  metrics = json.loads((workdir / "eval" / final / "metrics.json").read_text())
  expected_metrics = json.loads((reference_dir / "eval" / final / "metrics.json").read_text())
  # The evaluation saw every query / gallery image once, over both processes' extractors.
  for key in ("num_query", "num_gallery", "num_valid_queries", "feature_dim"):
    assert metrics[key] == expected_metrics[key], key
  assert 0.0 < metrics["metrics"]["mAP"] <= 1.0

  # Resumed on another topology (1 process, 4 devices) with a longer schedule: it goes
  # on from the 2-process checkpoint, with the sampler's next batches.
  more = NUM_EPOCHS + 2
  rerun = run_train(
    config_file, workdir, f"--config.train.num_epochs={more}", eps_flag, log_batches=True
  )
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-4000:]
  total = more * run.STEPS_PER_EPOCH
  assert checkpoint_steps(workdir)[-1] == total
  resumed = read_batch_index_log(workdir, process=0)
  train = source_lib.load_source("market1501", "train", str(data_root / "tfds"))
  person_ids = np.array([train[i]["person_id"] for i in range(len(train))])
  sequence = run.expected_batches(person_ids, total)
  assert [resumed[s] for s in range(TOTAL_STEPS + 1, total + 1)] == sequence[TOTAL_STEPS:]
