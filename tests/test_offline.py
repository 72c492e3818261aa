"""Offline by construction, with the user's own Ultralytics settings: importing gor_det + Ultralytics, checking a
dataset and building a model make zero network attempts (sockets are blocked in a fresh interpreter, so any attempt
raises), the font is provided in the user's Ultralytics config dir, and `yolo settings datasets_dir=...` decides where
the built-in `coco.yaml` looks, as in plain Ultralytics."""

import json
import os
import subprocess
import sys
import textwrap

BLOCK_NETWORK = """
import socket
attempts = []
class Blocked(socket.socket):
    def connect(self, *a, **k):
        attempts.append(a); raise OSError("network blocked by test")
    connect_ex = connect
socket.socket = Blocked
def gai(*a, **k):
    attempts.append(("dns",) + a); raise OSError("dns blocked by test")
socket.getaddrinfo = gai
socket.create_connection = lambda *a, **k: gai(*a)
"""


def fresh_env(tmp_path):
    """No YOLO_* / GOR_DET* variables and a fresh XDG config home: Ultralytics' default config dir is a new one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "GOR_DET"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    return env


def run(code, env, cwd):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=180, cwd=cwd)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def test_no_network_attempts(tiny_data, tmp_path):
    code = BLOCK_NETWORK + f"""
import gor_det
from ultralytics.data.utils import check_det_dataset
from ultralytics.utils import USER_CONFIG_DIR
from ultralytics.utils.checks import check_font
from ultralytics.nn.tasks import DetectionModel
check_det_dataset({str(tiny_data)!r})
font = check_font("Arial.ttf")
DetectionModel("yolov8n.yaml", nc=10, verbose=False)
assert font is not None and font.exists(), font
print("FONT", font.parent == USER_CONFIG_DIR, USER_CONFIG_DIR)
print("ATTEMPTS", len(attempts), attempts[:3])
"""
    out = run(code, fresh_env(tmp_path), tmp_path)
    assert "ATTEMPTS 0 []" in out, out[-2000:]
    assert f"FONT True {tmp_path / 'xdg' / 'Ultralytics'}" in out  # the user's config dir, not a private one


def test_yolo_settings_datasets_dir_finds_a_local_coco_layout(tmp_path):
    """`yolo settings datasets_dir=D`, COCO in Ultralytics' layout under D/coco: `data=coco.yaml` (the built-in
    yaml) resolves there without a download attempt, and gor_det's preflight accepts it."""
    env = fresh_env(tmp_path)
    datasets = tmp_path / "my_datasets"
    run(f"""
import gor_det
from ultralytics.cfg import entrypoint
entrypoint("yolo settings datasets_dir={datasets} runs_dir={tmp_path / 'my_runs'}")
""", env, tmp_path)
    settings = json.loads((tmp_path / "xdg" / "Ultralytics" / "settings.json").read_text())
    assert settings["datasets_dir"] == str(datasets)
    code = BLOCK_NETWORK + f"""
import gor_det
from gor_det.data.coco_standin import make_coco_standin
from gor_det.engine.preflight import check_dataset
make_coco_standin({str(datasets)!r}, n_train=2, n_val=2, imgsz=64)
d = check_dataset("coco.yaml")
from ultralytics.utils import SETTINGS
print("PATH", d["path"], d["nc"], SETTINGS["runs_dir"])
print("ATTEMPTS", len(attempts), attempts[:3])
"""
    out = run(code, env, tmp_path)
    assert f"PATH {datasets / 'coco'} 80 {tmp_path / 'my_runs'}" in out, out[-2000:]
    assert "ATTEMPTS 0 []" in out, out[-2000:]
