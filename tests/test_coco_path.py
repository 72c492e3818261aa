"""The COCO path of docs/getting-started.md section 4, run as written: the bash blocks of that section are read from
the doc and run in order, over a COCO-shaped stand-in (Ultralytics' layout under `yolo settings datasets_dir`,
`coco.yaml` naming, 80 classes, `instances_val2017.json` with COCO's category ids), with the shipped templates edited
as the doc says (the `/path/to/...` lines) and a tiny budget appended to the train commands. Teacher fine-tune, QAT +
KD + GoR student, val, export, PTQ, offline (sockets blocked in every process: a download fails the run)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/getting-started.md"
TINY = ["epochs=1", "imgsz=64", "batch=2", "nbs=2", "workers=0", "device=cpu", "plots=False", "amp=False",
        "close_mosaic=0", "warmup_epochs=0", "gor.threads=2"]


def section_commands() -> list[str]:
    """The shell commands of section 4's bash blocks, continuation lines joined, comments dropped."""
    text = DOC.read_text()
    sec = text[text.index("## 4. Real data: COCO"):text.index("## 5.")]
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", sec, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("  #")[0].strip()
            if cmd and not cmd.startswith("#"):
                cmds.append(cmd)
    return cmds


def save_fp(path: Path, cfg: str) -> None:
    """A local pretrained-style .pt (random init, 80 COCO classes): nothing is downloaded."""
    from ultralytics.nn.tasks import DetectionModel

    from gor_det.data.coco_standin import COCO_NAMES

    m = DetectionModel(cfg, nc=80, verbose=False)
    m.names = dict(enumerate(COCO_NAMES))
    torch.save({"model": m.half(), "train_args": {}}, path)


def test_the_documented_coco_path_runs_as_written(tmp_path):
    from gor_det.data.coco_standin import make_coco_standin

    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "GOR_DET"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    (tmp_path / "sitecustomize.py").write_text(
        "import socket\n"
        "def _blocked(*a, **k):\n    raise OSError('network blocked by test')\n"
        "socket.socket.connect = _blocked\nsocket.getaddrinfo = _blocked\nsocket.create_connection = _blocked\n")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    datasets = tmp_path / "datasets"
    subprocess.run([sys.executable, "-c", f"import gor_det; from ultralytics.cfg import entrypoint; "
                    f"entrypoint('yolo settings datasets_dir={datasets}')"], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    make_coco_standin(datasets, n_train=4, n_val=2, imgsz=64)
    pts = tmp_path / "pretrained"
    pts.mkdir()
    for name in ("yolov8s", "yolo11s", "yolov8n"):
        save_fp(pts / f"{name}.pt", f"{name}.yaml")
    (tmp_path / "cfg").mkdir()
    for t in ("coco_teacher_finetune.yaml", "coco_student_qat_kd.yaml"):  # the EDIT lines, as a user edits them
        text = (ROOT / "gor_det/cfg" / t).read_text()
        text = text.replace("/path/to/teachers/yolov8s.pt", "runs/coco/teacher_v8s/weights/best.pt") \
            if t.startswith("coco_student") else text.replace("/path/to/teachers/yolov8s.pt", str(pts / "yolov8s.pt"))
        text = (text.replace("/path/to/teachers/yolo11s.pt", str(pts / "yolo11s.pt"))
                .replace("/path/to/students/yolov8n.pt", str(pts / "yolov8n.pt"))
                .replace("/path/to/coco.yaml", "coco.yaml"))
        assert "/path/to" not in text.split("#")[0], t
        (tmp_path / "cfg" / t).write_text(text)

    cmds = section_commands()
    assert any("coco_teacher_finetune" in c for c in cmds) and any("coco_student_qat_kd" in c for c in cmds)
    for cmd in cmds:
        argv = shlex.split(cmd)
        assert argv[0] == "python" and argv[1].startswith("tools/"), cmd
        argv = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
        if "train_det.py" in cmd:
            argv += TINY
        elif "ptq_det.py" in cmd:  # the doc's float checkpoint: the student's FP start
            argv = [a if a != "fp.pt" else str(pts / "yolov8n.pt") for a in argv] + ["--imgsz", "64"]
        elif "export_det.py" in cmd and "fp_ptq.pt" in cmd:
            argv = [a if a != "fp_ptq.pt" else str(pts / "yolov8n_ptq.pt") for a in argv]
        if "val_det.py" in cmd:
            argv += ["--device", "cpu"]
        out = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    student = tmp_path / "runs/coco/student_w8a8/weights/best.pt"
    report = json.loads((tmp_path / "runs/coco/student_w8a8/export/export.json").read_text())
    assert student.is_file() and report["qat"]
    assert {"onnx_qdq", "ncnn_int8", "onnx_ort_int8"} <= set(report["exports"])
    assert all("mAP50-95" in e for e in report["exports"].values()), report
