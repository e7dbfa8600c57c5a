"""Several processes under torchrun (gloo on the CPU): shards by rank, one manifest, DDP training, faults.

The end-to-end tests start ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m dfcompress ...`` on
the demo teacher with one thread per process (the single-process references too: the same arithmetic)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dfcompress.data.synthetic import ShardPlan, SyntheticWriter, load
from dfcompress.distributed import World, device_for, world_from_env
from dfcompress.errors import ConfigError, DataError

SYNTH = ["-q", "synthesize", "--synth", "deepinversion", "--iterations", "4", "--num-images", "40",
         "--batch-size", "8"]


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DFCOMPRESS_DIST_TIMEOUT="60")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _dfcompress(tmp_path: Path, args: list[str], *, procs: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", "-m"]
                if procs > 1 else [sys.executable, "-m"])
    return subprocess.run([*launcher, "dfcompress", *args], capture_output=True, text=True, env=_env(tmp_path),
                          timeout=timeout, cwd=tmp_path)


def _checksums(directory: Path) -> list[tuple[int, str]]:
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["complete"]
    return [(s["index"], s["sha256"]) for s in manifest["shards"]]


# -- the world and the writer, without processes ---------------------------------------------------------------
def test_world_from_env_and_slices():
    assert world_from_env({}) == World()
    world = world_from_env({"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "0"})
    assert (world.rank, world.size, world.local_rank, world.is_main, world.distributed) == (2, 3, 0, False, True)
    with pytest.raises(ConfigError, match="does not fit"):
        world_from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ConfigError, match="integers"):
        world_from_env({"WORLD_SIZE": "two"})
    batch = torch.arange(10)
    parts = [World(rank=r, size=3).part(batch) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))  # every item once: no padding, no repeats
    assert [i for i in range(7) if World(rank=1, size=3).owns(i)] == [1, 4]
    assert device_for("auto", World(rank=1, size=2)) in ("cpu", "cuda:1")
    assert device_for("cpu", World(rank=1, size=2)) == "cpu"


def _shard(writer: SyntheticWriter, index: int, value: int) -> None:
    images = torch.full((2, 1, 4, 4), value, dtype=torch.uint8)
    writer.add(ShardPlan(index, 2, 0), images, torch.tensor([0, 1]), confidence=torch.ones(2), metrics={})


def test_other_ranks_record_shards_and_rank_0_merges_them(tmp_path):
    def writer(rank: int) -> SyntheticWriter:
        return SyntheticWriter(tmp_path, {"x": 1}, num_images=8, batch_size=2, seed=0, world=World(rank=rank, size=2))

    with pytest.raises(DataError, match="storage every process sees"):
        writer(1)  # rank 0 has not created the data set
    main = writer(0)
    other = writer(1)
    _shard(main, 0, 10)
    _shard(other, 1, 11)
    _shard(other, 3, 13)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["index"] for s in manifest["shards"]] == [0]  # rank 1 never writes the manifest
    assert sorted(p.name for p in tmp_path.glob("record-*.json")) == ["record-00001.json", "record-00003.json"]
    assert {p.index for p in other.pending()}.isdisjoint({1, 3})  # recorded shards count as done
    (tmp_path / "shard-00003.safetensors").write_bytes(b"broken")  # a record whose shard is corrupt is not done
    assert main.collect() == 1
    assert not list(tmp_path.glob("record-*.json"))
    assert [p.index for p in main.pending()] == [2, 3]
    _shard(main, 2, 12)
    _shard(main, 3, 13)
    data = load(tmp_path)
    assert data.images[:, 0, 0, 0].tolist() == [10, 10, 11, 11, 12, 12, 13, 13]


def test_reopening_merges_records_left_by_a_killed_run(tmp_path):
    SyntheticWriter(tmp_path, {"x": 1}, num_images=4, batch_size=2, seed=0, world=World(rank=0, size=2))
    other = SyntheticWriter(tmp_path, {"x": 1}, num_images=4, batch_size=2, seed=0, world=World(rank=1, size=2))
    _shard(other, 1, 7)
    reopened = SyntheticWriter(tmp_path, {"x": 1}, num_images=4, batch_size=2, seed=0)  # e.g. one process now
    assert [s["index"] for s in reopened.manifest["shards"]] == [1]
    assert [p.index for p in reopened.pending()] == [0]


def _workers(out: str) -> list[int]:
    """The pids of the worker processes (not the launcher) of the dfcompress command writing to ``out``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"dfcompress" in argv and out.encode() in argv and b"torch.distributed.run" not in argv:
            pids.append(int(entry.name))
    return pids


# -- torchrun, 2 processes -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_make_the_data_set_one_process_makes(tmp_path):
    one = _dfcompress(tmp_path, [*SYNTH, "--out", "one"])
    assert one.returncode == 0, one.stderr
    two = _dfcompress(tmp_path, [*SYNTH, "--out", "two"], procs=2)
    assert two.returncode == 0, two.stderr
    assert _checksums(tmp_path / "two") == _checksums(tmp_path / "one")
    assert len(_checksums(tmp_path / "two")) == 5
    assert (tmp_path / "two" / "log-rank1.txt").is_file()
    assert not list((tmp_path / "two").glob("record-*.json"))
    assert two.stdout.count("40 images in two") == 1  # only rank 0 prints


@pytest.mark.slow
def test_ddp_distillation_is_close_to_one_process(tmp_path):
    made = _dfcompress(tmp_path, ["data", "import", "digits:train", "--per-class", "20", "--out", "digits"])
    assert made.returncode == 0, made.stderr
    run = ["-q", "run", "--task", "distill", "--synthetic", "digits", "--epochs", "15", "-d", "batch_size=32", "--json"]
    accuracy = {}
    for procs in (1, 2):
        result = _dfcompress(tmp_path, [*run, "--out", f"run{procs}"], procs=procs)
        assert result.returncode == 0, result.stderr
        metrics = json.loads((tmp_path / f"run{procs}" / "metrics.json").read_text())
        accuracy[procs] = metrics["models"]["student"]["top1"]
    assert accuracy[1] > 0.25 and accuracy[2] > 0.25, accuracy  # chance is 0.10
    assert abs(accuracy[1] - accuracy[2]) <= 0.10, accuracy
    assert (tmp_path / "run2" / "student.pt").is_file() and (tmp_path / "run2" / "log-rank1.txt").is_file()


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_and_a_restart_finishes_the_same_data_set(tmp_path):
    args = ["-q", "synthesize", "--synth", "deepinversion", "--iterations", "30", "--num-images", "64",
            "--batch-size", "4", "--seed", "3"]
    reference = _dfcompress(tmp_path, [*args, "--out", "ref"])
    assert reference.returncode == 0, reference.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "dfcompress"]
    proc = subprocess.Popen([*launcher, *args, "--out", "two"], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "two"
    deadline = time.time() + 120
    while not list(out.glob("record-*.json")) and time.time() < deadline:
        time.sleep(0.2)
    ranks = _workers("two")
    assert ranks, "no worker process found"
    killed = time.time()
    os.kill(max(ranks), signal.SIGKILL)  # a worker (the launcher starts them in rank order)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.time() - killed < 90, "the run did not end after a rank died"
    assert not json.loads((out / "manifest.json").read_text())["complete"], "killed too late to test a restart"
    again = _dfcompress(tmp_path, [*args, "--out", "two"], procs=2)
    assert again.returncode == 0, again.stderr
    assert _checksums(out) == _checksums(tmp_path / "ref")


@pytest.mark.slow
def test_what_runs_in_one_process_is_refused_in_one_line(tmp_path):
    result = _dfcompress(tmp_path, ["-q", "run", "--synth", "fast", "--out", "online", "--iterations", "2"], procs=2)
    assert result.returncode != 0
    assert "[rank 0] error: the online schedule runs in one process for now" in result.stderr
    assert "[rank 1] error: rank 0 failed: the online schedule" in result.stderr
    # torchrun prints its own launcher traceback for a failed child; none comes from dfcompress's code
    assert not re.search(r'dfcompress/[\w/]+\.py", line', result.stderr), result.stderr


def test_a_rank_that_cannot_see_the_run_directory_says_so(tmp_path):
    from dfcompress.config import make_run_config
    from dfcompress.plugins import get_registry
    from dfcompress.run import Run

    config = make_run_config({"out": str(tmp_path / "run")})
    run = Run(config, get_registry(), world=World(rank=1, size=2))
    with pytest.raises(ConfigError, match="rank 1 on .* cannot see the run directory .*storage every process sees"):
        run._join()
    with pytest.raises(ConfigError, match="needs --out DIR"):
        Run(make_run_config({}), get_registry(), world=World(rank=0, size=2))
