"""gor_det.engine.ddp: two gloo processes (torch.distributed.run, as Ultralytics launches DDP) train QAT + KD + GoR
steps through the trainer's own pieces and end with identical parameters and buffers on both ranks."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

WORKER = textwrap.dedent("""
    import os, sys
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data, teacher, project, out = sys.argv[1:5]
    sys.path.insert(0, os.environ["GOR_DET_TESTS"])
    import gor_det  # noqa: F401
    from conftest import tiny_overrides
    from torch.nn.parallel import DistributedDataParallel
    from ultralytics.utils.torch_utils import unwrap_model

    from gor_det.config import parse_gor
    from gor_det.engine.trainer import make_trainer_class

    gor = parse_gor({"teachers": [teacher], "threads": 1,
                     "quant": {"a_symmetric": False, "calib": "minmax", "calib_batches": 1,
                               "placement": os.environ["GOR_DET_PLACEMENT"]},
                     "balance": {"method": "gor", "grad_every": 1}})
    def cpu_ddp(module, device_ids=None, **kwargs):  # Ultralytics passes device_ids=[cuda index]; a CPU module has none
        return DistributedDataParallel(module, **kwargs)

    torch.nn.parallel.DistributedDataParallel = cpu_ddp  # this worker only: the CUDA wrap, on CPU
    trainer = make_trainer_class(gor)(overrides=tiny_overrides(data, project, "ddp", batch=8, nbs=8))
    trainer.world_size = dist.get_world_size()  # a CPU device counts as none; the worker of a 2-GPU run has 2
    trainer._setup_train()  # what _do_train runs in every DDP worker after init_process_group: DDP wrap, EMA, ...
    assert isinstance(trainer.model, DistributedDataParallel)
    trainer.epoch = 0
    trainer.run_callbacks("on_train_start")
    trainer.run_callbacks("on_train_epoch_start")
    trainer.model.train()
    for i, batch in enumerate(trainer.train_loader):
        if i == int(os.environ.get("GOR_DET_STEPS", 3)):
            break
        trainer.run_callbacks("on_train_batch_start")
        loss, _ = trainer.model(trainer.preprocess_batch(batch))
        (loss.sum() * dist.get_world_size()).backward()
        trainer.optimizer_step()
    state = {f"model.{k}": v for k, v in unwrap_model(trainer.model).state_dict().items()}
    state.update({f"ema.{k}": v for k, v in trainer.ema.ema.state_dict().items()})
    torch.save(state, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["conv", "full"])
def test_two_ranks_end_with_identical_state(tiny_data, tmp_path, placement):
    """After 3 real QAT + KD + GoR steps on different data per rank (DistributedSampler, per-rank seeds,
    each rank calibrating on its own augmented batch): the same parameters and buffers on both ranks, in the model
    and its EMA (BN statistics that set the fold, asymmetric zero points, the GoR scalars and transfer averages),
    with either quantizer placement (``full``: the tied step sizes live once, where their owner is)."""
    import yaml
    from test_engine_kd import save_teacher

    names = yaml.safe_load(open(tiny_data))["names"]
    teacher = save_teacher(tmp_path / "teacher.pt", nc=len(names), names=names)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "GOR_DET_TESTS": str(Path(__file__).parent), "OMP_NUM_THREADS": "1",
           "GOR_DET_PLACEMENT": placement,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(tiny_data), teacher, str(tmp_path / "runs"),
           str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    s0, s1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert s0.keys() == s1.keys()
    differ = [k for k in s0 if not torch.equal(s0[k], s1[k])]
    assert differ == [], differ[:20]
    moved = [k for k in s0 if k.endswith("bn.running_var") and not torch.equal(s0[k], torch.ones_like(s0[k]))]
    assert moved and int(s0["model.kd.gor.xfer_bits"].view(torch.float32)[2]) == 2  # they trained, and measured
    zp = [k for k in s0 if k.startswith("model.") and k.endswith("act_q.zero_point")]
    assert zp and any(float(s0[k]) != 0 for k in zp)  # asymmetric zero points, calibrated
