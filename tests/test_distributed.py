"""Multi-process training under torchrun: batch sharding, the single-process helpers, the runner with
real process groups, and a real 2-process pipeline run compared with a single-process run."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import distributed
from pipeline.distributed import shard_batches, shard_rows
from pipeline.errors import UserError
from tests.conftest import ROOT, run_cli

QUICK = ["--set", "bench.targets=[host]", "--set", "export.formats=[onnx_fp32]",
         "--set", "export.android.enabled=false"]


def torchrun(*args, nproc=2, timeout=600, cwd=None):
    """``torchrun --standalone --nproc_per_node=nproc ARGS`` (a free port; one machine)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n,batch,world", [(400, 128, 2), (401, 128, 2), (10, 3, 4), (5, 128, 8), (129, 128, 2),
                                           (7, 1, 3), (64, 64, 2)])
def test_shards_cover_every_sample_once_with_equal_step_counts(n, batch, world):
    gen = torch.Generator().manual_seed(0)
    for _epoch in range(3):
        perm = torch.randperm(n, generator=gen)
        shards = [list(shard_batches(perm, batch, r, world)) for r in range(world)]
        steps = -(-n // batch)
        assert all(len(s) == steps for s in shards)  # DDP needs the same number of steps on every rank
        covered = []
        for k in range(steps):
            parts = [s[k] for s in shards]
            sizes = [p.numel() for p in parts]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
            global_batch = perm[k * batch : (k + 1) * batch]
            joined = torch.cat(parts)
            if global_batch.numel() >= world:  # the same global batch as one process, cut in pieces
                assert torch.equal(joined, global_batch)
            else:  # a tiny last batch: padded by repeating its rows
                assert set(joined.tolist()) == set(global_batch.tolist()) and joined.numel() == world
            covered += global_batch.tolist()
        assert sorted(covered) == list(range(n))


def test_shard_batches_single_process_is_the_plain_loop():
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    plain = [perm[i : i + 64] for i in range(0, 300, 64)]
    assert all(torch.equal(a, b) for a, b in zip(shard_batches(perm, 64, 0, 1), plain, strict=True))


@pytest.mark.parametrize("n,world", [(100, 2), (101, 2), (3, 4), (0, 2), (17, 5)])
def test_shard_rows_partition(n, world):
    rows = [list(range(n))[shard_rows(n, r, world)] for r in range(world)]
    assert [i for r in rows for i in r] == list(range(n))
    assert max(map(len, rows)) - min(map(len, rows)) <= 1


# --------------------------------------------------------------------------- one process


def test_helpers_without_torchrun_are_single_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.init_from_env() is False
    assert (distributed.active(), distributed.collective(), distributed.rank(), distributed.world_size()) == (
        False, False, 0, 1)
    assert distributed.is_main()
    assert distributed.on_main(lambda: 41 + 1) == 42
    assert distributed.all_reduce_sum(3) == 3 and distributed.all_reduce_sum(2.5) == 2.5
    assert distributed.gather("x") == ["x"] and distributed.broadcast({"a": 1}) == {"a": 1}
    distributed.barrier()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env() is False


def test_half_set_environment_is_a_user_error(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not.*torchrun"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE='two' is not an integer"):
        distributed.init_from_env()
    assert not distributed.active()


# --------------------------------------------------------------------------- runner + fit, 2 processes

TOY = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    import numpy as np
    import torch

    from pipeline import distributed
    from pipeline.config import TrainConfig, load_config
    from pipeline.errors import UserError
    from pipeline.io import atomic_write, atomic_write_text
    from pipeline.runner import Runner, Stage
    from pipeline.train import fit

    out, mode = Path(sys.argv[1]), sys.argv[2]
    rank = os.environ["RANK"]

    def note(what):  # plain writes, every rank (pipeline.io writes on rank 0 only)
        with open(out.parent / f"calls.{rank}", "a") as f:
            f.write(what + "\\n")

    def make(ctx):
        note("make")
        x = np.linspace(-1, 1, 50, dtype=np.float32)[:, None]
        atomic_write(ctx.path("xy.npz"), lambda f: np.savez(f, x=x, y=2 * x + 1))
        if mode == "fail":
            raise UserError("broken on purpose")
        return ["xy.npz"]

    def train(ctx):
        note("train")
        z = np.load(ctx.path("xy.npz"))
        seen, solo = [], []
        model = torch.nn.Linear(1, 1)

        def loss_fn(m, b):
            x, y, idx = b
            if torch.is_grad_enabled():
                seen.append(idx.tolist())
                assert isinstance(m, torch.nn.parallel.DistributedDataParallel)
            return torch.nn.functional.mse_loss(m(x), y)

        hist = fit(model, loss_fn, (z["x"], z["y"], np.arange(50)), (z["x"], z["y"], np.arange(50)),
                   TrainConfig(epochs=3, batch_size=8, lr=0.05, patience=5), seed=0)
        total = distributed.all_reduce_sum(float(len(sum(seen, []))))
        with open(out.parent / f"seen.{rank}.json", "w") as f:
            json.dump({"seen": seen, "val": hist.val_loss, "w": model.weight.item(), "total": total}, f)
        atomic_write_text(ctx.path("w.txt"), repr(model.weight.item()))
        return ["w.txt"]

    def alone(ctx):  # a rank-0 stage that trains: one process, no DDP, no collectives
        note("alone")
        model = torch.nn.Linear(1, 1)
        x = np.ones((6, 1), np.float32)
        fit(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), (x, x), (x, x),
            TrainConfig(epochs=2, batch_size=4, patience=5), seed=0)
        assert distributed.all_reduce_sum(1) == 1
        atomic_write_text(ctx.path("alone.txt"), "ok")
        return ["alone.txt"]

    runner = Runner([Stage("make", make, (), ("data",)),
                     Stage("train", train, ("xy.npz",), ("teacher",), distributed=True),
                     Stage("alone", alone, ("w.txt",), ("bench",))])
    try:
        res, _ = runner.run(out, load_config())
    except UserError as e:
        print(f"rank {rank} error: {e}", flush=True)
        sys.exit(2)
    print(f"rank {rank} " + " ".join(f"{r.name}={r.status}" for r in res), flush=True)
''')


def test_runner_and_fit_on_two_processes(tmp_path):
    script = tmp_path / "toy.py"
    script.write_text(TOY)
    out = tmp_path / "run"
    proc = torchrun(script, out, "ok")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 make=ran train=ran alone=ran" in proc.stdout and "rank 1 make=ran train=ran alone=ran" in proc.stdout
    # rank-0 stages ran once; the training stage on both ranks
    assert (tmp_path / "calls.0").read_text().split() == ["make", "train", "alone"]
    assert (tmp_path / "calls.1").read_text().split() == ["train"]
    s0, s1 = (json.loads((tmp_path / f"seen.{r}.json").read_text()) for r in (0, 1))
    steps = 7  # ceil(50 / 8) global batches per epoch, the same on both ranks
    assert len(s0["seen"]) == len(s1["seen"]) == 3 * steps
    for epoch in range(3):
        rows = [i for s in (s0, s1) for b in s["seen"][epoch * steps : (epoch + 1) * steps] for i in b]
        assert sorted(rows) == list(range(50))  # every sample once per epoch, split over the ranks
    assert s0["total"] == s1["total"] == 150
    assert s0["val"] == s1["val"] and s0["w"] == s1["w"]  # same early-stopping input, same weights
    assert float((out / "w.txt").read_text()) == s0["w"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"make", "train", "alone"}
    assert not list(out.glob(".*.tmp"))

    again = torchrun(script, out, "ok")  # the cache decision is rank 0's, the same on both ranks
    assert again.returncode == 0, again.stderr[-3000:]
    for r in (0, 1):
        assert f"rank {r} make=cached train=cached alone=cached" in again.stdout


def test_error_on_rank0_stage_reaches_every_rank(tmp_path):
    script = tmp_path / "toy.py"
    script.write_text(TOY)
    proc = torchrun(script, tmp_path / "run", "fail", timeout=300)
    assert proc.returncode != 0
    assert "rank 0 error: broken on purpose" in proc.stdout
    assert "rank 1 error: broken on purpose" in proc.stdout  # not a hang: rank 1 got rank 0's error
    assert not (tmp_path / "calls.1").exists()


# --------------------------------------------------------------------------- the real pipeline


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, small_config_file):
    """The reduced config once with one process and once with torchrun --nproc_per_node=2."""
    base = tmp_path_factory.mktemp("ddp")
    one = run_cli("run", "--config", small_config_file, "--out", base / "one", *QUICK)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun("-m", "pipeline", "run", "--config", small_config_file, "--out", base / "two", *QUICK)
    assert two.returncode == 0, two.stderr[-3000:]
    return base / "one", base / "two", two


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_process_run_writes_the_same_files(two_runs):
    one, two, _ = two_runs
    assert _files(one) == _files(two)
    for name in ("report.json", "report.md", "student.pt", "teacher.pt", "manifest.json", "distill.json"):
        assert (two / name).is_file()
    manifest = json.loads((two / "manifest.json").read_text())
    assert list(manifest["stages"]) == list(json.loads((one / "manifest.json").read_text())["stages"])
    from pipeline.io import sha256_file

    for rel, entry in manifest["files"].items():  # one writer: every file is the one the manifest hashed
        assert sha256_file(two / rel) == entry["sha256"], rel
    assert not [p for p in two.rglob(".*.tmp")]


@pytest.mark.slow
def test_two_process_student_works_and_is_within_10_percent(two_runs):
    from pipeline.config import load_config
    from pipeline.data import Splits
    from pipeline.metrics import task_metrics
    from pipeline.checkpoints import load_checkpoint
    from pipeline.train import predict

    one, two, _ = two_runs
    cfg = load_config(two / "config.yaml")
    splits = Splits.load(two / "data.npz")
    student = load_checkpoint(two / "student.pt", cfg)
    pred = predict(student, splits.x["test"])
    assert np.isfinite(pred).all() and pred.shape[0] == splits.x["test"].shape[0]
    rmse_two = json.loads((two / "student.json").read_text())["test"]["rmse"]
    assert task_metrics(pred, splits.y_clean["test"], splits.task)["rmse"] == pytest.approx(rmse_two, rel=1e-6)
    rmse_one = json.loads((one / "student.json").read_text())["test"]["rmse"]
    assert abs(rmse_two - rmse_one) <= 0.10 * rmse_one, (rmse_one, rmse_two)
    d1, d2 = (json.loads((d / "distill.json").read_text())["methods"] for d in (one, two))
    for name in d1:  # every method, not only the deployed one
        a, b = d1[name]["test_label_head"]["rmse"], d2[name]["test_label_head"]["rmse"]
        assert abs(a - b) <= 0.10 * a, (name, a, b)


@pytest.mark.slow
def test_two_process_run_trained_on_both_ranks_and_logged_once(two_runs):
    _, _, proc = two_runs
    err = proc.stderr
    # DDP was used by the training stages (fit says so), and each stage is logged once, by rank 0
    assert err.count("stage teacher  running on 2 processes") == 1, err[-3000:]
    assert err.count("stage distill  running on 2 processes") == 1
    assert "(2 processes)" in err
    for stage in ("data", "student", "export", "bench", "report"):
        assert err.count(f"stage {stage:<8} running") == 1, stage
    assert proc.stdout.count("stages: data (ran") == 1  # the final table is printed by rank 0 only
