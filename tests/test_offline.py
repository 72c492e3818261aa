"""Offline by construction: importing gor_det + Ultralytics, checking a dataset and building a model make zero
network attempts (sockets are blocked in a fresh interpreter, so any attempt raises)."""

import subprocess
import sys
import textwrap


def test_no_network_attempts(tiny_data, tmp_path):
    code = textwrap.dedent(f"""
        import socket
        attempts = []
        class Blocked(socket.socket):
            def connect(self, *a, **k):
                attempts.append(a); raise OSError("network blocked by test")
            connect_ex = connect
        socket.socket = Blocked
        _gai = socket.getaddrinfo
        def gai(*a, **k):
            attempts.append(("dns",) + a); raise OSError("dns blocked by test")
        socket.getaddrinfo = gai
        socket.create_connection = lambda *a, **k: gai(*a)
        import os
        os.environ["GOR_DET_HOME"] = {str(tmp_path)!r}   # a fresh config dir: the font must be provided, not found
        import gor_det
        from ultralytics.data.utils import check_det_dataset
        from ultralytics.utils.checks import check_font
        from ultralytics.nn.tasks import DetectionModel
        check_det_dataset({str(tiny_data)!r})
        font = check_font("Arial.ttf")
        DetectionModel("yolov8n.yaml", nc=10, verbose=False)
        assert font is not None and font.exists(), font
        print("ATTEMPTS", len(attempts), attempts[:3])
    """)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("YOLO_", "GOR_DET"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ATTEMPTS 0 []" in out.stdout, out.stdout[-2000:]
