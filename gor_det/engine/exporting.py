"""Export a trained student for deployment, each artefact checked against PyTorch (logic behind tools/export_det.py).

Formats (``gor.export.formats`` or ``--formats``):

* ``onnx_qdq``: TensorRT explicit-quantization ONNX from the *learned* step sizes (``quant.convert_for_export``):
  INT8 weight initializers + DequantizeLinear (per-channel, axis 0), Q/DQ on every quantized conv input, zero points 0.
  Checked by :func:`gor_det.export.check_qdq` (TensorRT rules) and against the PyTorch fake-quant model.
* ``onnx``: plain FP32 ONNX of the float model (QAT stripped) for comparison.
* ``ncnn``: NCNN FP32 via pnnx, and for a QAT student NCNN INT8 whose scales are the learned ones.
* ``onnx_ort_int8``: INT8 ONNX for ONNX Runtime on CPU (:mod:`gor_det.export.ort_int8`): the learned scales plus
  calibrated ranges on the tensors ORT's integer kernels also need quantized (calibration images: ``calib_images``
  training images of ``--data``, else of the run's own dataset, else the parity images).
* ``engine``: a TensorRT engine when tensorrt and a GPU are present; otherwise the exact ``trtexec`` line is printed.

Every export is compared with its PyTorch reference on real images (Ultralytics' bundled ``bus.jpg``/``zidane.jpg``
or ``gor.export.parity_images``): class-score max difference, relative L2 and detections after NMS. A failed check
raises :class:`ExportCheckError` (the CLI exits non-zero) after writing the report.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn

from gor_det.config import ConfigError, ExportCfg, parse_gor
from gor_det.engine.checkpoint import deployable
from gor_det.engine.evaluate import load_model, train_imgsz
from gor_det.quant import convert_for_export, is_qat, strip_qat

FORMATS = ("onnx_qdq", "onnx", "ncnn", "onnx_ort_int8", "engine")

# Parity tolerances (see docs/evaluation.md): FP exports must match PyTorch closely; INT8 runtimes are compared with
# the PyTorch fake-quant model, where a rounding flip at a step boundary moves single values by one step.
FP_TOL = dict(cls_tol=1e-3, rel_l2_tol=1e-3, min_match=0.95, min_mean_iou=0.95)
INT8_TOL = dict(cls_tol=0.1, rel_l2_tol=0.05, min_match=0.8, min_mean_iou=0.8)


class ExportCheckError(RuntimeError):
    """An export was written but failed its check (Q/DQ rules or parity); the report says which numbers."""


def export_mode(model: nn.Module) -> nn.Module:
    """Put every Detect head in export mode (decoded ``(B, 4+nc, A)`` output only, the layout every gor_det backend
    returns); end-to-end heads keep their one-to-many branch so the output layout stays the same."""
    for m in model.modules():
        if hasattr(m, "reg_max") and hasattr(m, "stride") and hasattr(m, "export"):
            m.export, m.format, m.dynamic = True, "onnx", False
            if hasattr(m, "end2end"):
                m.end2end = False
    return model.eval()


def float_model(student: nn.Module) -> nn.Module:
    """The FP counterpart of a (possibly QAT) student, BN fused, in export mode."""
    m = copy.deepcopy(student)
    if is_qat(m):
        strip_qat(m)
    return export_mode(m.fuse(verbose=False))


def export_student(
    model_path: str | Path,
    out_dir: str | Path,
    formats=None,
    imgsz: int | None = None,
    parity_images=None,
    opset: int = 17,
    data: str | Path | None = None,
) -> dict:
    """Export ``model_path`` to every requested format under ``out_dir``; returns (and writes ``export.json``) a report
    ``{format: {"path", "parity": {...}, "ok", ...}}``. Raises ExportCheckError if any check failed.

    ``formats``, ``imgsz``, ``parity_images`` default to the run's ``gor.export`` section (recorded in the
    checkpoint), then to all formats / the training imgsz / Ultralytics' bundled images. ``data`` (a dataset yaml)
    supplies the calibration images of ``onnx_ort_int8`` (default: the run's own training data)."""
    from gor_det.export import (
        TorchBackend,
        check_qdq,
        compare_backends,
        export_ncnn,
        export_ncnn_int8,
        export_onnx,
        export_onnx_ort_int8,
        export_onnx_qdq,
        load_backend,
        trtexec_command,
    )

    ckpt_model = load_model(model_path)
    run_cfg = getattr(ckpt_model, "gor_cfg", None)
    ecfg = parse_gor(run_cfg).export if run_cfg else ExportCfg()
    formats = list(formats or ecfg.formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}")
    imgsz = int(imgsz or ecfg.imgsz or train_imgsz(ckpt_model))
    parity_images = parity_images or ecfg.parity_images
    student = deployable(ckpt_model)
    qat = is_qat(student)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(model_path).stem
    report: dict = {"model": str(model_path), "imgsz": imgsz, "qat": qat, "exports": {}}
    fp = float_model(student)
    q_ref = export_mode(copy.deepcopy(student)) if qat else None
    deploy = export_mode(convert_for_export(student)) if qat else None

    def check(name, path, ref_model, tol, extra=None):
        par = compare_backends(TorchBackend(ref_model), load_backend(path), images=parity_images, imgsz=imgsz, **tol)
        entry = {"path": str(path), "parity": par.summary(), "ok": bool(par.ok), **(extra or {})}
        report["exports"][name] = entry
        print(f"[{name}] {path}\n{par.summary()}")

    if "onnx" in formats:
        p = export_onnx(fp, imgsz, out / f"{stem}_fp32.onnx", opset=opset)
        check("onnx", p, fp, FP_TOL)
    if "onnx_qdq" in formats:
        if not qat:
            print("[onnx_qdq] skipped: the model has no gor_det quantizers (train with gor.quant, or PTQ it first)")
        else:
            p = export_onnx_qdq(deploy, imgsz, out / f"{stem}_qdq.onnx", opset=opset)
            rules = check_qdq(p)
            print(rules.summary())
            check("onnx_qdq", p, q_ref, INT8_TOL, {"qdq_rules_ok": bool(rules.ok), "trtexec": trtexec_command(
                p, out / f"{stem}_int8.engine")})
            report["exports"]["onnx_qdq"]["ok"] &= bool(rules.ok)
    if "ncnn" in formats:
        m = export_ncnn(fp, imgsz, out / f"{stem}_ncnn_fp32")
        check("ncnn_fp32", m.dir, fp, FP_TOL)
        if qat:
            m8 = export_ncnn_int8(deploy, imgsz, out / f"{stem}_ncnn_int8")
            check("ncnn_int8", m8.dir, q_ref, INT8_TOL)
    if "onnx_ort_int8" in formats:
        if not qat:
            print("[onnx_ort_int8] skipped: the model has no gor_det quantizers (train with gor.quant, or PTQ it first)")
        else:
            calib, source = calibration_images(ckpt_model, data, ecfg.calib_images, imgsz, parity_images)
            print(f"[onnx_ort_int8] calibrating the non-learned ranges on {len(calib)} images ({source})")
            p = export_onnx_ort_int8(deploy, imgsz, out / f"{stem}_ort_int8.onnx", calib, opset=opset)
            check("onnx_ort_int8", p, q_ref, INT8_TOL, {"calibration": source})
    if "engine" in formats:
        report["exports"]["engine"] = _tensorrt(out, stem, qat)
    (out / "export.json").write_text(json.dumps(report, indent=2))
    failed = [k for k, v in report["exports"].items() if v.get("ok") is False]
    if failed:
        raise ExportCheckError(f"export check failed for {', '.join(failed)}: see {out / 'export.json'}")
    return report


def calibration_images(model: nn.Module, data, n: int, imgsz: int, parity_images=None):
    """``(images (N, 3, H, W) float32, where from)``: ``n`` training images spread evenly over the train split of
    ``data``, else of the dataset the checkpoint was trained on (when that yaml exists here), else the parity
    images (with a warning: two images calibrate poorly)."""
    import warnings

    from gor_det.eval.predict import image_files
    from gor_det.export import default_images, load_images

    args = getattr(model, "args", None) or {}
    run_data = args.get("data") if isinstance(args, dict) else getattr(args, "data", None)
    for src in (data, run_data):
        if src and Path(src).is_file():
            try:
                files = image_files(src, "train")
            except (FileNotFoundError, ValueError):
                continue
            step = max(1, len(files) // n)
            return load_images(files[::step][:n], imgsz), f"{min(n, len(files[::step]))} train images of {src}"
    warnings.warn("onnx_ort_int8: no training images found (pass --data): calibrating on the parity images only",
                  stacklevel=2)
    paths = parity_images or default_images()
    return load_images(paths, imgsz), f"parity images {[Path(p).name for p in paths]}"


def _tensorrt(out: Path, stem: str, qat: bool) -> dict:
    from gor_det.export import TensorRTUnavailable, build_engine, trtexec_command

    onnx_path = out / (f"{stem}_qdq.onnx" if qat else f"{stem}_fp32.onnx")
    engine = out / f"{stem}_{'int8' if qat else 'fp16'}.engine"
    cmd = trtexec_command(onnx_path, engine, int8=qat)
    try:
        build_engine(onnx_path, engine, int8=qat, fp16=True)
        return {"path": str(engine), "trtexec": cmd}
    except TensorRTUnavailable as e:
        print(f"[engine] skipped: {e}\n  build it on the Jetson with:\n  {cmd}")
        return {"skipped": str(e), "trtexec": cmd}
