"""The prepared GPU check: Ultralytics' stock AMP training vs gor_det's QAT + KD + GoR under AMP, on one GPU.

    bash bench/gpu_wheels.sh                                   # here: the wheels the GPU machine lacks, into .whl/
    # there (one command, ~5-8 min on one H100, nothing fetched):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_check.py --out $OUT
    python bench/gpu_check.py --dry-run --out runs/gpu_check  # CPU: the same script at toy sizes (a test runs it)

Runs, each one short epoch on the synthetic ``bench`` preset plus Ultralytics' ``final_eval`` (best.pt reloaded through
AutoBackend, ``.half()``):

* ``stock``: Ultralytics' ``DetectionTrainer``, FP YOLOv8n from YAML, ``amp=True``, at ``--imgsz`` / ``--batch``
  (640 / 64, Ultralytics' defaults; halved on out-of-memory until it fits);
* ``gor_det``: W8A8 QAT + KD from a YOLOv8s teacher + GoR (the defaults), ``amp=True``, same size;
* ``ultralytics_quantize8``: Ultralytics' own ``quantize=8`` (NVIDIA ModelOpt QAT), when ModelOpt is importable;
* ``w_kd amp`` / ``w_kd fp32``: gor_det's run at 320 px / batch 16 for ~``--wkd-steps`` steps with ``amp=True`` and
  ``amp=False``: GoR's learned ``w_kd`` must not depend on AMP (its gradient measurement is made at the GradScaler's
  scale).

The teacher is a random-init YOLOv8s (nothing is downloaded; the check is about the GPU path, not accuracy). Measured
per run: s/iteration (mean over the steps after the first 3, CUDA-synchronised), ``max_memory_allocated`` of the
training loop, host syncs per training step (``torch.cuda.set_sync_debug_mode('warn')`` during steps 3-5; this counts
Ultralytics' own, e.g. its progress bar, in every run), the GradScaler's final scale and its skipped steps (scale
decreases), network attempts (every socket connect is recorded and refused), and whether ``final_eval`` passed.
Writes ``gpu_check.json`` and ``gpu_check.md`` (the table for docs/getting-started.md) under ``--out``.

Targets: 0 crashes, 0 network attempts, gor_det step time <= 1.5x stock, memory <= 1.5x stock.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import socket
import sys
import time
import traceback
import warnings
from datetime import date
from pathlib import Path

NETWORK: list[str] = []  # every connect attempted by anything in this process


def refuse_network() -> None:
    """Record and refuse every socket connect (the check must make none)."""
    real = socket.socket.connect

    def connect(self, address):
        NETWORK.append(str(address))
        raise OSError(f"gpu_check: network refused ({address})")

    socket.socket.connect = connect
    socket.socket._gpu_check_real_connect = real


class Probe:
    """Callbacks measuring one training run (``attach(trainer)``); read ``summary()`` afterwards."""

    SYNC_STEPS = (3, 6)  # host syncs counted over these training steps [start, end)

    def __init__(self, cuda: bool, record_w_kd: bool = False):
        self.cuda, self.record_w_kd = cuda, record_w_kd
        self.step, self.times, self.t0 = 0, [], None
        self.scales, self.w_kd, self.syncs, self.peak = [], [], [], None
        self._caught = None

    def attach(self, trainer) -> None:
        for event, fn in (("on_train_start", self.start), ("on_train_batch_start", self.batch_start),
                          ("on_train_batch_end", self.batch_end), ("on_train_epoch_end", self.epoch_end)):
            trainer.add_callback(event, fn)

    def _sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def start(self, trainer):
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def batch_start(self, trainer):
        self._sync()
        self.t0 = time.perf_counter()
        if self.cuda and self.step == self.SYNC_STEPS[0]:
            import torch

            self._caught = warnings.catch_warnings(record=True)
            self._log = self._caught.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

    def batch_end(self, trainer):
        if self._caught is not None and self.step == self.SYNC_STEPS[1] - 1:
            import torch

            torch.cuda.set_sync_debug_mode(0)
            n = sum("synchroniz" in str(w.message) for w in self._log)
            self._caught.__exit__(None, None, None)
            self._caught = None
            self.syncs.append(n / (self.SYNC_STEPS[1] - self.SYNC_STEPS[0]))
        self._sync()
        self.times.append(time.perf_counter() - self.t0)
        scaler = trainer.scaler
        if scaler.is_enabled():
            get = getattr(scaler, "_get_scale_async", None)
            self.scales.append(get().detach().clone() if get else scaler.get_scale())
        if self.record_w_kd and "w_kd" in (trainer.loss_items or {}):
            self.w_kd.append(trainer.loss_items["w_kd"].detach().clone())
        self.step += 1

    def epoch_end(self, trainer):
        if self.cuda:
            import torch

            self.peak = max(self.peak or 0, torch.cuda.max_memory_allocated())

    def summary(self) -> dict:
        scales = [float(s) for s in self.scales]
        steady = self.times[3:] or self.times
        return {
            "steps": self.step,
            "s_per_it": sum(steady) / max(len(steady), 1),
            "max_memory_allocated_mib": None if self.peak is None else self.peak / 2**20,
            "host_syncs_per_step": self.syncs[0] if self.syncs else None,
            "grad_scale_final": scales[-1] if scales else None,
            "skipped_steps": sum(b < a for a, b in zip(scales, scales[1:])),
            "w_kd": [float(w) for w in self.w_kd],
        }


def save_random_teacher(path: Path, data_yaml: Path, cfg: str = "yolov8s.yaml") -> str:
    """A random-init teacher checkpoint in Ultralytics' format, with the dataset's class names."""
    import torch
    import yaml
    from ultralytics.nn.tasks import DetectionModel

    names = yaml.safe_load(data_yaml.read_text())["names"]
    m = DetectionModel(cfg, nc=len(names), verbose=False)
    m.names = names
    torch.save({"model": m.half(), "train_args": {}}, path)
    return str(path)


def train_once(name: str, make_trainer, overrides: dict, cuda: bool, record_w_kd: bool = False) -> dict:
    """One run with a :class:`Probe`; out of memory (CUDA) halves the batch and retries. Never raises."""
    import torch

    while True:
        probe = Probe(cuda, record_w_kd)
        row = {"run": name, "batch": overrides.get("batch"), "imgsz": overrides.get("imgsz")}
        try:
            trainer = make_trainer(overrides)
            probe.attach(trainer)
            trainer.train()
            row.update(probe.summary(), final_eval="pass" if trainer.metrics else "no metrics", amp=bool(trainer.amp),
                       batch=trainer.batch_size)
        except torch.cuda.OutOfMemoryError:
            if overrides["batch"] <= 8:
                return {**row, "final_eval": "fail", "error": "out of memory at batch 8"}
            overrides = {**overrides, "batch": overrides["batch"] // 2, "nbs": max(overrides["batch"] // 2, 64)}
            torch.cuda.empty_cache()
            continue
        except Exception as e:  # a crash is a result of this check, reported, not raised
            row.update(probe.summary(), final_eval="fail", error=f"{type(e).__name__}: {e}".splitlines()[0],
                       traceback=traceback.format_exc()[-3000:])
        return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--wkd-steps", type=int, default=300, help="steps of the w_kd amp vs fp32 runs")
    ap.add_argument("--data-root", default=None, help="where the synthetic bench preset is generated")
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks that the script runs end to end")
    a = ap.parse_args(argv)
    refuse_network()
    import torch

    import gor_det  # noqa: F401  (offline env before ultralytics)
    from gor_det.config import parse_gor
    from gor_det.data.synthetic import make_synthetic
    from gor_det.engine.trainer import make_trainer_class

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not a.dry_run
    if not cuda and not a.dry_run:
        print("error: no CUDA GPU visible; run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    preset, imgsz, batch, wkd_imgsz, wkd_batch = ("tiny", 64, 8, 64, 8) if a.dry_run else (
        "bench", a.imgsz, a.batch, 320, 16)
    wkd_steps = min(a.wkd_steps, 3) if a.dry_run else a.wkd_steps
    data = Path(make_synthetic(Path(a.data_root or out / "data"), preset=preset, seed=0))
    teacher = save_random_teacher(out / "teacher_v8s_random.pt", data)
    device = 0 if cuda else "cpu"
    common = dict(data=str(data), epochs=1, device=device, workers=8 if cuda else 0, project=str(out / "runs"),
                  exist_ok=True, plots=False, seed=0, close_mosaic=0, warmup_epochs=0, verbose=False, val=True)
    gor = parse_gor({"teachers": [teacher], "quant": {}})
    rows = []

    def stock(ov):
        from ultralytics.models.yolo.detect import DetectionTrainer

        return DetectionTrainer(overrides=ov)

    def ours(ov):
        return make_trainer_class(gor)(overrides=ov)

    size = dict(imgsz=imgsz, batch=batch, nbs=max(batch, 64), amp=True)
    rows.append(train_once("stock", stock, {**common, **size, "model": "yolov8n.yaml", "name": "stock"}, cuda))
    rows.append(train_once("gor_det", ours, {**common, **size, "model": "yolov8n.yaml", "name": "gor_det"}, cuda))
    try:
        import modelopt  # noqa: F401

        rows.append(train_once("ultralytics_quantize8", stock, {**common, **size, "model": "yolov8n.yaml",
                                                                 "quantize": 8, "name": "quantize8"}, cuda))
    except ImportError:
        rows.append({"run": "ultralytics_quantize8", "final_eval": "skipped", "error": "nvidia-modelopt not installed"})
    n_train = sum(1 for _ in (data.parent / "images" / "train").iterdir())
    epochs = max(1, math.ceil(wkd_steps / max(1, n_train // wkd_batch)))
    for amp in (True, False):
        ov = {**common, "model": "yolov8n.yaml", "imgsz": wkd_imgsz, "batch": wkd_batch, "nbs": wkd_batch,
              "epochs": epochs, "amp": amp, "name": f"wkd_amp{int(amp)}"}
        rows.append(train_once(f"w_kd {'amp' if amp else 'fp32'}", ours, ov, cuda, record_w_kd=True))

    report = {"device": torch.cuda.get_device_name(0) if cuda else f"CPU dry run ({platform.processor() or 'x86_64'})",
              "torch": torch.__version__, "date": str(date.today()), "network_attempts": NETWORK, "runs": rows,
              "command": "python3 bench/gpu_check.py" + (" --dry-run" if a.dry_run else "")}
    report["ratios"] = ratios(rows)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    crashed = [r["run"] for r in rows if r.get("final_eval") == "fail"]
    return 1 if crashed or NETWORK else 0


def ratios(rows: list[dict]) -> dict:
    """gor_det vs stock (step time, memory) and the w_kd paths with and without AMP."""
    by = {r["run"]: r for r in rows}
    s, g = by.get("stock", {}), by.get("gor_det", {})
    out = {}
    for key in ("s_per_it", "max_memory_allocated_mib"):
        if s.get(key) and g.get(key):
            out[key] = g[key] / s[key]
    wa, wf = by.get("w_kd amp", {}).get("w_kd"), by.get("w_kd fp32", {}).get("w_kd")
    if wa and wf:
        n = min(len(wa), len(wf))
        out["w_kd_final_amp_vs_fp32"] = wa[n - 1] / wf[n - 1]
        out["w_kd_max_log_diff"] = max(abs(math.log(x / y)) for x, y in zip(wa[:n], wf[:n]))
    return out


def markdown(report: dict) -> str:
    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v) if isinstance(v, (int, float)) else str(v)

    lines = [f"{report['device']}, torch {report['torch']}, {report['date']}: `{report['command']}`", "",
             "| run | batch x imgsz | s/it | max memory (MiB) | host syncs / step | GradScaler scale | skipped steps "
             "| final_eval |", "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['run']} | {f(r.get('batch'), '{}')} x {f(r.get('imgsz'), '{}')} | {f(r.get('s_per_it'))} | "
                     f"{f(r.get('max_memory_allocated_mib'), '{:.0f}')} | {f(r.get('host_syncs_per_step'), '{:.1f}')} | "
                     f"{f(r.get('grad_scale_final'), '{:.0f}')} | {f(r.get('skipped_steps'), '{}')} | "
                     f"{r.get('final_eval')}{' (' + r['error'] + ')' if r.get('error') else ''} |")
    rt = report["ratios"]
    lines += ["", f"gor_det / stock: step time {f(rt.get('s_per_it'), '{:.2f}x')}, memory "
              f"{f(rt.get('max_memory_allocated_mib'), '{:.2f}x')}; w_kd with AMP / without at the last step "
              f"{f(rt.get('w_kd_final_amp_vs_fp32'), '{:.3f}')} (largest |log ratio| along the path "
              f"{f(rt.get('w_kd_max_log_diff'), '{:.3f}')}); network attempts: {len(report['network_attempts'])}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
