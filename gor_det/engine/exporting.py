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
* ``engine``: a TensorRT engine (INT8 from the Q/DQ ONNX for a quantized model, else FP16 from the FP32 ONNX) when
  tensorrt and a GPU are present; otherwise the exact ``trtexec`` line is printed.

Every argument (model, formats, imgsz, parity images, ``--data`` with its val images and annotation json) is
checked before the first export starts: bad input is one :class:`~gor_det.config.ConfigError` line and nothing is
written. Every export is then compared with its PyTorch reference on real images (Ultralytics' bundled
``bus.jpg``/``zidane.jpg`` or ``gor.export.parity_images``): class-score max difference, relative L2 and detections
after NMS, and, with ``evaluate``, scored (COCO mAP) on the val split of ``data``. A format that fails (a TensorRT
parse or build error, a failed check) is an entry with its ``error`` in ``export.json`` while the other formats are
still written, checked and scored; then :class:`ExportCheckError` is raised (the CLI exits non-zero). Each INT8
entry also holds ``structure``, the structural speed report of :mod:`gor_det.export.structure` (ops in INT8,
INT8<->float boundaries, INT8 share of conv MACs), printed with the export; a failure of that report is its
``structure_error`` and does not fail the export.
"""

from __future__ import annotations

import copy
import json
import traceback
from pathlib import Path

from torch import nn

from gor_det.config import ConfigError, ExportCfg, parse_gor, suggest
from gor_det.engine.checkpoint import deployable
from gor_det.engine.evaluate import check_classes, check_eval_set, evaluate_artifact, load_model, run_data, train_imgsz
from gor_det.engine.ptq import default_ptq_out, ptq_command
from gor_det.quant import convert_for_export, is_qat, strip_qat

FORMATS = ("onnx_qdq", "onnx", "ncnn", "onnx_ort_int8", "engine")
INT8_FORMATS = ("onnx_qdq", "onnx_ort_int8")  # need a quantized (QAT or PTQ) model

# Parity tolerances (see docs/evaluation.md): FP exports must match PyTorch closely; INT8 runtimes are compared with
# the PyTorch fake-quant model, where a rounding flip at a step boundary moves single values by one step. A TensorRT
# engine runs its float layers in FP16 (--fp16), whose rounding is finer than INT8's: both engines use INT8_TOL.
FP_TOL = dict(cls_tol=1e-3, rel_l2_tol=1e-3, min_match=0.95, min_mean_iou=0.95)
INT8_TOL = dict(cls_tol=0.1, rel_l2_tol=0.05, min_match=0.8, min_mean_iou=0.8)


class ExportCheckError(RuntimeError):
    """An export failed (build error) or was written but failed its check (Q/DQ rules or parity); ``report`` (also in
    ``export.json``) says which and why."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


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


def check_formats(formats) -> list[str]:
    """The requested formats, de-duplicated in order; an unknown one is a ConfigError with "did you mean"."""
    formats = list(dict.fromkeys(str(f) for f in formats))
    for f in formats:
        if f not in FORMATS:
            raise ConfigError(f"unknown export format '{f}'{suggest(f, FORMATS)}; choose from {', '.join(FORMATS)}")
    return formats


def _needs_quantizers(model_path, formats, data) -> str:
    """The one line for INT8 formats asked of a float checkpoint: the problem, and the PTQ command that fixes it."""
    int8 = " ".join(f for f in formats if f in INT8_FORMATS)
    return (f"--formats {int8} needs a quantized model, but {model_path} has no gor_det quantizers (a float "
            f"checkpoint); PTQ it first: {ptq_command(model_path, data)} (writes {default_ptq_out(model_path)}; "
            "export that), or train it with a gor.quant section (QAT)")


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if not isinstance(e, (RuntimeError, ConfigError)) else str(e)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def add_structure(entry: dict, path, fmt: str, imgsz: int) -> dict:
    """Add the structural speed report of an INT8 artefact (:func:`gor_det.export.structure.structure_report`) to its
    ``export.json`` entry as ``"structure"`` and print its summary; a failure is ``"structure_error"``, never fatal."""
    from gor_det.export.structure import structure_report, summary

    try:
        entry["structure"] = structure_report(path, fmt, imgsz)
        print(summary(entry["structure"]))
    except Exception as e:  # noqa: BLE001  (a report, not a check: the export stands)
        entry["structure_error"] = _error_text(e)
        print(f"[{fmt}] structure report FAILED: {entry['structure_error']}")
    return entry


def export_student(
    model_path: str | Path,
    out_dir: str | Path,
    formats=None,
    imgsz: int | None = None,
    parity_images=None,
    opset: int = 17,
    data: str | Path | None = None,
    ann: str | Path | None = None,
    evaluate: bool = False,
) -> dict:
    """Export ``model_path`` to every requested format under ``out_dir``; returns (and writes ``export.json``) a report
    ``{"model", "imgsz", "qat", "exports": {name: {"path", "parity": {...}, "ok", ...}}}``.

    ``formats``, ``imgsz``, ``parity_images`` default to the run's ``gor.export`` section (recorded in the
    checkpoint), then to all formats / the training imgsz / Ultralytics' bundled images; of the defaults, a float
    model gets the float formats only, while INT8 formats asked of it explicitly are a ConfigError naming the PTQ
    command. ``data`` (a dataset yaml) supplies the calibration images of ``onnx_ort_int8`` (default: the run's own
    training data); ``evaluate``: every written artefact is also scored on ``data``'s val split (COCO annotation
    ``ann``, else the yaml's ``coco_json``), its ``mAP50-95`` / ``mAP50`` added to its entry.

    Raises:
        ConfigError: bad input, found before anything is written.
        ExportCheckError: after writing the report, if a format failed to export, failed its check or its
            evaluation (the other formats are complete).
    """
    from gor_det.export import (
        TensorRTUnavailable,
        TorchBackend,
        build_engine,
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

    # ---- every argument is checked before the first file is written
    explicit = bool(formats)
    if explicit:
        formats = check_formats(formats)
    ckpt_model = load_model(model_path)
    run_cfg = getattr(ckpt_model, "gor_cfg", None)
    # only the export section: a checkpoint's training sections may name balancers this process has not imported
    ecfg = parse_gor({"export": run_cfg.get("export") or {}}).export if isinstance(run_cfg, dict) else ExportCfg()
    formats = check_formats(formats or ecfg.formats)
    if imgsz is not None and int(imgsz) <= 0:
        raise ConfigError(f"--imgsz {imgsz} must be a positive number of pixels (default: the training imgsz)")
    imgsz = int(imgsz or ecfg.imgsz or train_imgsz(ckpt_model))
    parity_images = parity_images or ecfg.parity_images
    for im in parity_images or ():
        if not Path(im).is_file():
            raise ConfigError(f"parity image not found: {im} (--images / gor.export.parity_images take image files)")
    student = deployable(ckpt_model)
    qat = is_qat(student)
    if not qat and any(f in INT8_FORMATS for f in formats):
        if explicit or all(f in INT8_FORMATS for f in formats):
            raise ConfigError(_needs_quantizers(model_path, formats, data or run_data(ckpt_model)))
        print(f"[{', '.join(f for f in formats if f in INT8_FORMATS)}] skipped: the model has no gor_det quantizers "
              f"(for INT8, PTQ it first: {ptq_command(model_path, data or run_data(ckpt_model))})")
        formats = [f for f in formats if f not in INT8_FORMATS]
    eval_set = None
    if evaluate:
        if not data:
            raise ConfigError("evaluation needs a dataset: pass --data (its val split is scored)")
        eval_set = check_eval_set(data, ann)
        data = eval_set.data  # a built-in name resolved to its local yaml
        names = getattr(ckpt_model, "names", None)
        check_classes(list(names.values()) if isinstance(names, dict) else names, eval_set, model_path,
                      run_data(ckpt_model))
    elif ann:
        raise ConfigError("--ann is the annotation json of --data's val split: pass --data too")
    elif data and not Path(data).is_file():
        from gor_det.engine.preflight import local_data_yaml

        data = local_data_yaml(data)  # a built-in name (coco.yaml), or a one-line ConfigError
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the output dir {out}: {e.strerror}; pass a writable --out") from None

    # ---- the exports: each format on its own, a failure is recorded and the others still run
    stem = Path(model_path).stem
    report: dict = {"model": str(model_path), "imgsz": imgsz, "qat": qat, "exports": {}}
    exports = report["exports"]
    fp = float_model(student)
    q_ref = export_mode(copy.deepcopy(student)) if qat else None
    deploy = export_mode(convert_for_export(student)) if qat else None

    def check(name, path, ref_model, tol, extra=None):
        par = compare_backends(TorchBackend(ref_model), load_backend(path), images=parity_images, imgsz=imgsz, **tol)
        exports[name] = {**exports.get(name, {}), "path": str(path), "parity": par.summary(), "ok": bool(par.ok),
                         **(extra or {})}
        print(f"[{name}] {path}\n{par.summary()}")

    def attempt(name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (reported in export.json; the other formats still run)
            exports[name] = {**exports.get(name, {}), "ok": False, "error": _error_text(e),
                             "traceback": traceback.format_exc(limit=-8)}
            print(f"[{name}] FAILED: {_error_text(e)}")

    def onnx_fp():
        check("onnx", export_onnx(fp, imgsz, out / f"{stem}_fp32.onnx", opset=opset), fp, FP_TOL)

    def onnx_qdq():
        p = export_onnx_qdq(deploy, imgsz, out / f"{stem}_qdq.onnx", opset=opset)
        add_structure(exports.setdefault("onnx_qdq", {}), p, "onnx_qdq", imgsz)
        rules = check_qdq(p)
        print(rules.summary())
        check("onnx_qdq", p, q_ref, INT8_TOL, {"qdq_rules_ok": bool(rules.ok), "trtexec": trtexec_command(
            p, out / f"{stem}_int8.engine")})
        exports["onnx_qdq"]["ok"] &= bool(rules.ok)

    def ncnn_fp32():
        check("ncnn_fp32", export_ncnn(fp, imgsz, out / f"{stem}_ncnn_fp32").dir, fp, FP_TOL)

    def ncnn_int8():
        m = export_ncnn_int8(deploy, imgsz, out / f"{stem}_ncnn_int8")
        add_structure(exports.setdefault("ncnn_int8", {}), m.param, "ncnn_int8", imgsz)
        check("ncnn_int8", m.dir, q_ref, INT8_TOL)

    def onnx_ort_int8():
        calib, source = calibration_images(ckpt_model, data, ecfg.calib_images, imgsz, parity_images)
        print(f"[onnx_ort_int8] calibrating the non-learned ranges on {len(calib)} images ({source})")
        p = export_onnx_ort_int8(deploy, imgsz, out / f"{stem}_ort_int8.onnx", calib, opset=opset)
        add_structure(exports.setdefault("onnx_ort_int8", {}), p, "onnx_ort_int8", imgsz)
        check("onnx_ort_int8", p, q_ref, INT8_TOL, {"calibration": source})

    def engine():
        src = out / (f"{stem}_qdq.onnx" if qat else f"{stem}_fp32.onnx")
        path = out / f"{stem}_{'int8' if qat else 'fp16'}.engine"
        cmd = trtexec_command(src, path, int8=qat)
        exports["engine"] = {"onnx": str(src), "precision": "int8" if qat else "fp16", "trtexec": cmd}
        if not src.is_file():  # its ONNX format was not asked for (or failed): the engine needs the file
            if qat:
                export_onnx_qdq(deploy, imgsz, src, opset=opset)
            else:
                export_onnx(fp, imgsz, src, opset=opset)
        try:
            build_engine(src, path, int8=qat, fp16=True)
        except TensorRTUnavailable as e:
            exports["engine"]["skipped"] = str(e)
            print(f"[engine] {e}\n  build it on the Jetson with:\n  {cmd}")
            return
        check("engine", path, q_ref if qat else fp, INT8_TOL)

    steps = {"onnx": [("onnx", onnx_fp)], "onnx_qdq": [("onnx_qdq", onnx_qdq)],
             "ncnn": [("ncnn_fp32", ncnn_fp32)] + ([("ncnn_int8", ncnn_int8)] if qat else []),
             "onnx_ort_int8": [("onnx_ort_int8", onnx_ort_int8)], "engine": [("engine", engine)]}
    for fmt in FORMATS:  # this order: the engine step reuses the ONNX written before it
        if fmt in formats:
            for name, fn in steps[fmt]:
                attempt(name, fn)
    report_path = out / "export.json"
    report_path.write_text(json.dumps(report, indent=2))

    # ---- scoring: every written artefact by the one evaluation path (gor_det.eval), the engine included
    if eval_set is not None:
        for name, entry in exports.items():
            if "path" not in entry:
                continue
            try:
                m = evaluate_artifact(entry["path"], eval_set.data, imgsz, out / "eval" / name, eval_set=eval_set)
            except Exception as e:  # noqa: BLE001  (reported; the other artefacts are still scored)
                entry["eval_error"] = _error_text(e)
                print(f"[{name}] evaluation FAILED: {entry['eval_error']}")
                continue
            entry.update({"mAP50-95": m["mAP50-95"], "mAP50": m["mAP50"], "eval": str(out / "eval" / name)})
            print(f"[{name}] mAP50-95 {m['mAP50-95']:.4f}  mAP50 {m['mAP50']:.4f}")
        report_path.write_text(json.dumps(report, indent=2))

    failed = []
    for name, e in exports.items():
        if "error" in e:
            failed.append(f"{name} ({_first_line(e['error'])})")
        elif e.get("ok") is False:
            failed.append(f"{name} (its check: {'Q/DQ rules' if e.get('qdq_rules_ok') is False else 'parity'})")
        elif "eval_error" in e:
            failed.append(f"{name} (evaluation: {_first_line(e['eval_error'])})")
    if failed:
        done = [k for k, e in exports.items() if e.get("ok") and "eval_error" not in e]
        raise ExportCheckError(f"export failed for {'; '.join(failed)}; {len(done)} other(s) written and checked "
                               f"({', '.join(done) or 'none'}): see {report_path}", report)
    return report


def calibration_images(model: nn.Module, data, n: int, imgsz: int, parity_images=None):
    """``(images (N, 3, H, W) float32, where from)``: ``n`` training images spread evenly over the train split of
    ``data``, else of the dataset the checkpoint was trained on (when that yaml exists here), else the parity
    images (with a warning: two images calibrate poorly)."""
    import warnings

    from gor_det.eval.predict import image_files
    from gor_det.export import default_images, load_images

    for src in (data, run_data(model)):
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
