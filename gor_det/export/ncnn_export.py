"""NCNN export: FP32/FP16 via pnnx, and INT8 written by gor_det from the learned QAT scales.

ncnn2table / ncnn2int8 are not shipped in the ``ncnn`` wheel (deployment-facts), so :func:`export_ncnn_int8` does
what ncnn2int8 does (``tools/quantize/net_quantize.cpp``: ``quantize_convolution`` / ``quantize_convolutiondepthwise``)
with the QAT scales instead of a calibration table:

1. every quantized conv of the ``convert_for_export`` model is replaced by a float ``nn.Conv2d`` holding its
   dequantized weight ``weight_int * weight_scale``, and the model goes through pnnx (fp16=0);
2. pnnx layers (``conv_N``) are mapped to the quantized modules by matching their float weights in the .bin;
3. each matched ``Convolution`` gets ``8=2`` (``ConvolutionDepthWise``: ``8=1``) in the .param, and in the .bin
   (``src/layer/convolution.cpp`` ``load_model``): the weight as ``mb.load(weight_data_size, 0)`` with the int8 tag
   ``0x000D4B38`` and int8 data padded to 4 bytes, the bias unchanged (``mb.load(num_output, 1)``, raw float32),
   then ``weight_data_int8_scales`` (``num_output`` raw float32; ``group`` for depthwise) and
   ``bottom_blob_int8_scales`` (1 raw float32).

NCNN scales multiply (``q = round(x * scale)``, clamp [-127, 127]): ``scale = 1 / step = 127 / amax``, the inverse
of ONNX/TensorRT's ``step = amax / 127``. The int8 weights are ``weight_int`` unchanged, so NCNN computes
``sum(q_x * weight_int) * act_step * weight_step[c] + bias``, exactly the fake-quant conv.
Layers not quantized in PyTorch (first conv, DFL, head outputs per ``quant`` skip list) stay float.

NCNN has no INT8 ``BinaryOp`` / ``Concat``: with the ``full`` placement the residual Adds and Concats run in float
here, without the rounding of their inputs the fake-quant model has (the convs after a Concat quantize its output with
the same tied step, so they see the same integers; an Add's output can differ in the last code). Parity measures it.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gor_det.export._deps import ModelFileError, existing_file, imgsz_hw, require

NCNN_MAGIC = "7767517"
TAG_FP16, TAG_INT8, TAG_RAW_SCALED = 0x01306B47, 0x000D4B38, 0x0002C056

# layer types with nothing in the .bin (subset of ncnn's layer list that pnnx emits for detectors and friends)
WEIGHTLESS = {
    "Input",
    "Split",
    "Slice",
    "Concat",
    "BinaryOp",
    "UnaryOp",
    "Eltwise",
    "Swish",
    "Sigmoid",
    "ReLU",
    "Clip",
    "HardSwish",
    "HardSigmoid",
    "Mish",
    "GELU",
    "ELU",
    "SELU",
    "TanH",
    "Softplus",
    "Erf",
    "Pooling",
    "Pooling1D",
    "Pooling3D",
    "Interp",
    "Reshape",
    "Permute",
    "Softmax",
    "Crop",
    "Flatten",
    "Noop",
    "Padding",
    "Dropout",
    "Squeeze",
    "ExpandDims",
    "Reduction",
    "ShuffleChannel",
    "PixelShuffle",
    "Reorg",
    "Cast",
    "MatMul",
    "Tile",
    "Threshold",
    "Power",
    "Exp",
    "Log",
    "AbsVal",
    "Packing",
    "Flip",
    "CopyTo",
    "Fold",
    "Unfold",
    "Shrink",
    "Diag",
    "CumulativeSum",
    "ArgMax",
}
CONV_TYPES = ("Convolution", "ConvolutionDepthWise")


@dataclass
class NcnnLayer:
    """One .param line: ``type name nbottom ntop bottoms... tops... key=value...``."""

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, str]

    def i(self, key, default=0) -> int:
        return int(float(self.params.get(str(key), default)))

    def line(self) -> str:
        kv = " ".join(f"{k}={v}" for k, v in self.params.items())
        io = " ".join(self.bottoms + self.tops)
        return f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)} {io} {kv}".rstrip()


@dataclass
class NcnnModel:
    """Paths of an NCNN model; ``quantized``: ``[(ncnn layer, torch module name)]``, ``float_layers``: conv layers
    left float (INT8 export only), ``table``: the ncnn2int8-format calibration table written alongside."""

    param: Path
    bin: Path
    quantized: list[tuple[str, str]] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    table: Path | None = None

    @property
    def dir(self) -> Path:
        return self.param.parent


def read_param(path) -> tuple[list[str], list[NcnnLayer]]:
    """Parse a text .param: ``(header lines, layers)``; ``ModelFileError`` when it is not an NCNN param file."""
    p = existing_file(path)
    try:
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{p} is not a valid NCNN .param file: {e}") from e
    if not lines or lines[0] != NCNN_MAGIC or len(lines) < 2:
        raise ModelFileError(f"{p} is not a valid NCNN .param file (missing magic {NCNN_MAGIC})")
    layers = []
    for ln in lines[2:]:
        tok = ln.split()
        try:
            nb, nt = int(tok[2]), int(tok[3])
            bottoms, tops, rest = tok[4 : 4 + nb], tok[4 + nb : 4 + nb + nt], tok[4 + nb + nt :]
            params = dict(kv.split("=", 1) for kv in rest)
        except (IndexError, ValueError) as e:
            raise ModelFileError(f"{p} is not a valid NCNN .param file: bad line {ln!r}") from e
        layers.append(NcnnLayer(tok[0], tok[1], bottoms, tops, params))
    return lines[:2], layers


def write_param(path, header: list[str], layers: list[NcnnLayer]) -> None:
    Path(path).write_text("\n".join([*header, *(la.line() for la in layers)]) + "\n")


def _blobs(la: NcnnLayer) -> list[tuple[str, int]]:
    """The ``mb.load`` calls of ``layer.load_model``: ``[("tagged"|"raw", element count)]``."""
    t, i = la.type, la.i
    if t in (
        "Convolution",
        "ConvolutionDepthWise",
        "Convolution1D",
        "ConvolutionDepthWise1D",
        "Convolution3D",
        "ConvolutionDepthWise3D",
        "Deconvolution",
        "DeconvolutionDepthWise",
        "Deconvolution1D",
        "DeconvolutionDepthWise1D",
        "Deconvolution3D",
        "DeconvolutionDepthWise3D",
    ):
        if i(19, 0):  # dynamic_weight: weights come from a bottom blob
            return []
        n = i(0)
        out = [("tagged", i(6))] + ([("raw", n)] if i(5) else [])
        term = i(8)
        if term and t.startswith("ConvolutionDepthWise"):
            out += [("raw", i(7, 1) if term in (1, 101) else 1), ("raw", 1)]
        elif term:
            out += [("raw", n), ("raw", 1)]
        if term > 100:
            out.append(("raw", 1))
        return out
    if t == "InnerProduct":
        n = i(0)
        out = [("tagged", i(2))] + ([("raw", n)] if i(1) else [])
        return out + ([("raw", n), ("raw", 1)] if i(8) else [])
    if t == "MemoryData":
        dims = [d for d in (i(0), i(1), i(11), i(2)) if d]
        return [("raw", int(np.prod(dims)) if dims else 1)]
    if t == "BatchNorm":
        return [("raw", i(0))] * 4
    if t == "Scale":
        n = i(0)
        return ([("raw", n)] if n != -233 else []) + ([("raw", n)] if i(1) else [])
    if t == "PReLU":
        return [("raw", i(0))]
    if t in ("LayerNorm", "RMSNorm"):
        return [("raw", i(0))] * ((2 if t == "LayerNorm" else 1) if i(2, 1) else 0)
    if t in ("GroupNorm", "InstanceNorm"):
        return [("raw", i(1) if t == "GroupNorm" else i(0))] * (2 if i(3 if t == "GroupNorm" else 2, 1) else 0)
    if t == "Embed":
        return [("tagged", i(3))] + ([("raw", i(0))] if i(2) else [])
    if t in WEIGHTLESS:
        return []
    raise NotImplementedError(f"NCNN layer type {t!r} ({la.name}): its .bin layout is unknown to gor_det")


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def _read_blob(buf: bytes, off: int, kind: str, n: int) -> tuple[np.ndarray, int]:
    """Decode one ``mb.load(n, type)`` at ``off``; returns ``(float32 or int8 array, new offset)``."""
    if kind == "raw":
        return np.frombuffer(buf, np.float32, n, off), off + 4 * n
    (tag,) = struct.unpack_from("<I", buf, off)
    off += 4
    if tag == TAG_FP16:
        return np.frombuffer(buf, np.float16, n, off).astype(np.float32), off + _align4(2 * n)
    if tag == TAG_INT8:
        return np.frombuffer(buf, np.int8, n, off), off + _align4(n)
    if tag in (0, TAG_RAW_SCALED):
        return np.frombuffer(buf, np.float32, n, off), off + 4 * n
    table = np.frombuffer(buf, np.float32, 256, off)  # any other non-zero flag: 256-entry table + uint8 indices
    idx = np.frombuffer(buf, np.uint8, n, off + 1024)
    return table[idx], off + 1024 + _align4(n)


def read_bin(layers: list[NcnnLayer], bin_path) -> tuple[dict, bytes]:
    """Locate every layer's data in the .bin: ``({layer name: (start, end, [arrays])}, bytes)``.

    ``ModelFileError`` when the file size does not match the .param (truncated / foreign .bin).
    """
    p = existing_file(bin_path)
    buf = p.read_bytes()
    spans, off = {}, 0
    for la in layers:
        start, arrays = off, []
        for kind, n in _blobs(la):
            if off + (4 if kind == "tagged" else 0) > len(buf):
                raise ModelFileError(f"{p} is truncated or does not belong to its .param (at layer {la.name})")
            try:
                a, off = _read_blob(buf, off, kind, n)
            except ValueError as e:
                raise ModelFileError(f"{p} is truncated or does not belong to its .param (layer {la.name})") from e
            arrays.append(a)
        spans[la.name] = (start, off, arrays)
    if off != len(buf):
        raise ModelFileError(f"{p} has {len(buf)} bytes but its .param describes {off}: corrupt or mismatched files")
    return spans, buf


# ----------------------------------------------------------------------------------------------------- pnnx


def _run_pnnx(model: nn.Module, im: torch.Tensor, param: Path, binf: Path, fp16: bool) -> None:
    pnnx = require("pnnx")
    param.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gor_det_pnnx_") as tmp:
        tmp = Path(tmp)
        model.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(im)  # dry run: Detect caches anchors/strides for this shape, so they trace as constants
            ts = torch.jit.trace(model, im, check_trace=False, strict=False)
        ts.save(str(tmp / "model.pt"))
        shape = ",".join(str(int(s)) for s in im.shape)
        cmd = [
            pnnx.EXEC_PATH, str(tmp / "model.pt"), f"inputshape=[{shape}]f32", "device=cpu", f"fp16={int(fp16)}",
            f"pnnxparam={tmp / 'model.pnnx.param'}", f"pnnxbin={tmp / 'model.pnnx.bin'}",
            f"pnnxpy={tmp / 'model_pnnx.py'}", f"pnnxonnx={tmp / 'model.pnnx.onnx'}",
            f"ncnnparam={tmp / 'model.ncnn.param'}", f"ncnnbin={tmp / 'model.ncnn.bin'}",
            f"ncnnpy={tmp / 'model_ncnn.py'}",
        ]  # fmt: skip
        r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0 or not (tmp / "model.ncnn.param").is_file():
            tail = (r.stdout + r.stderr)[-2000:]
            raise RuntimeError(f"pnnx failed (exit code {r.returncode}):\n{tail}")
        shutil.move(tmp / "model.ncnn.param", param)
        shutil.move(tmp / "model.ncnn.bin", binf)


def _dummy(model: nn.Module, imgsz) -> torch.Tensor:
    h, w = imgsz_hw(imgsz)
    p = next(iter(model.parameters()), None)
    return torch.zeros(1, 3, h, w, device=p.device if p is not None else "cpu")


def export_ncnn(model: nn.Module, imgsz, out_dir, fp16: bool = False) -> NcnnModel:
    """pnnx export of a prepared FP model to ``out_dir/model.ncnn.{param,bin}`` (input ``in0``, output ``out0``).

    ``fp16=True`` stores fp16 weights (half the .bin; NCNN computes in fp32/fp16 depending on its options). Name the
    folder ``*_ncnn_model`` to load it with Ultralytics.
    """
    out = Path(out_dir)
    param, binf = out / "model.ncnn.param", out / "model.ncnn.bin"
    _run_pnnx(model, _dummy(model, imgsz), param, binf, fp16)
    return NcnnModel(param, binf)


# ----------------------------------------------------------------------------------------------------- INT8


def is_deploy_conv(m: nn.Module) -> bool:
    """Duck-typed ``quant.deploy.DeployQConv2d``: buffers weight_int (4-D), weight_scale, bias, act_scale."""
    w = getattr(m, "weight_int", None)
    return isinstance(w, torch.Tensor) and w.dim() == 4 and hasattr(m, "weight_scale") and hasattr(m, "act_scale")


def _is_deploy_linear(m: nn.Module) -> bool:
    w = getattr(m, "weight_int", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2 and hasattr(m, "weight_scale")


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def is_deploy_point(m: nn.Module) -> bool:
    """Duck-typed ``quant.deploy.DeployQuant``: a quantization point outside a conv (the ``full`` placement's residual
    Add and Concat inputs), buffers ``scale`` and ``zero_point`` and no weight."""
    return hasattr(m, "export_range") and isinstance(getattr(m, "scale", None), torch.Tensor) and not hasattr(
        m, "weight_int")


def dequantized_copy(deploy_model: nn.Module, keep_points: bool = False) -> tuple[nn.Module, dict]:
    """Copy of ``deploy_model`` where each deploy conv/linear is a float ``nn.Conv2d``/``nn.Linear`` with the
    dequantized weight; returns ``(model, {module name: quant info})`` for the convs. The quantization points outside
    convs (:func:`is_deploy_point`) become ``nn.Identity`` unless ``keep_points`` (then they export as Q/DQ pairs)."""
    import copy

    model = copy.deepcopy(deploy_model).float().eval()
    info = {}
    if not keep_points:
        for name, m in list(model.named_modules()):
            if is_deploy_point(m):
                parent, _, attr_name = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr_name, nn.Identity())
    for name, m in list(model.named_modules()):
        if not (is_deploy_conv(m) or _is_deploy_linear(m)):
            continue
        wi = m.weight_int.detach().float()
        ws = m.weight_scale.detach().float().reshape(-1)
        w = wi * ws.view(-1, *([1] * (wi.dim() - 1)))
        b = getattr(m, "bias", None)
        if is_deploy_conv(m):
            groups = int(getattr(m, "groups", 1))
            f = nn.Conv2d(
                wi.shape[1] * groups,
                wi.shape[0],
                tuple(wi.shape[2:]),
                _pair(getattr(m, "stride", 1)),
                _pair(getattr(m, "padding", 0)),
                _pair(getattr(m, "dilation", 1)),
                groups,
                bias=b is not None,
            )
            info[name] = dict(
                weight=w.numpy().astype(np.float32),
                weight_int=wi.numpy(),
                weight_scale=ws.numpy().astype(np.float32),
                act_scale=float(m.act_scale),
                act_zero_point=float(getattr(m, "act_zero_point", 0.0)),
                act_signed=getattr(m, "a_export_range", (getattr(m, "a_qmin", -128), None))[0] < 0,
                groups=groups,
            )
        else:
            f = nn.Linear(wi.shape[1], wi.shape[0], bias=b is not None)
        with torch.no_grad():
            f.weight.copy_(w)
            if b is not None:
                f.bias.copy_(b.detach().float().reshape(-1))
        parent, _, attr_name = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr_name, f)
    return model, info


def _quant_reason(q: dict) -> str | None:
    """Why a deploy conv cannot be an NCNN INT8 conv (None: it can). Lower bit widths are fine: the deploy model
    runs them on the 8-bit export grid with the trained step, and their integer codes fit int8."""
    if q["act_zero_point"] != 0 or not q["act_signed"]:
        return "asymmetric/unsigned activation quantizer (NCNN INT8 is signed symmetric)"
    if np.abs(q["weight_int"]).max() > 127:
        return "weight integers outside [-127, 127]"
    return None


def unused_modules(model: nn.Module, names: set, imgsz) -> set:
    """The modules among ``names`` (with a ``weight``) whose weight does not reach the output of ``model``'s forward
    on the export dummy input: what pnnx's trace drops as dead code (YOLO26's one-to-one head branch, computed but
    not returned in export mode). Found by a backward pass on a copy."""
    import copy

    m = copy.deepcopy(model).float()
    mods = dict(m.named_modules())
    ws = {n: mods[n].weight for n in names if n in mods and isinstance(getattr(mods[n], "weight", None), torch.Tensor)}
    for p in m.parameters():
        p.requires_grad_(False)
    for w in ws.values():
        w.requires_grad_(True)
    y = m(_dummy(m, imgsz))
    y = y[0] if isinstance(y, (list, tuple)) else y
    if not y.requires_grad:  # none of them reaches the output
        return set(ws)
    y.float().sum().backward()
    return {n for n, w in ws.items() if w.grad is None}


def export_ncnn_int8(deploy_model: nn.Module, imgsz, out_dir, write_table: bool = True) -> NcnnModel:
    """Write an NCNN INT8 model from a ``quant.convert_for_export`` model, using its learned scales.

    Returns :class:`NcnnModel` with ``quantized`` ``[(ncnn layer, module name)]`` and ``float_layers`` (conv layers
    kept float: not quantized in PyTorch, or not representable in NCNN). ``ValueError`` when a quantized module has
    no matching pnnx layer (pnnx changed the weights, e.g. fused them).
    """
    out = Path(out_dir)
    float_model, info = dequantized_copy(deploy_model)
    if not info:
        raise ValueError(
            "no quantized conv (weight_int / weight_scale / act_scale) in the model: pass the output "
            "of gor_det.quant.convert_for_export"
        )
    with tempfile.TemporaryDirectory(prefix="gor_det_ncnn_") as tmp:
        fp_param, fp_bin = Path(tmp) / "fp.param", Path(tmp) / "fp.bin"
        _run_pnnx(float_model, _dummy(float_model, imgsz), fp_param, fp_bin, fp16=False)
        header, layers = read_param(fp_param)
        spans, buf = read_bin(layers, fp_bin)

    by_weight: dict[tuple, list[str]] = {}
    for name, q in info.items():
        by_weight.setdefault((q["weight"].size, q["weight"].tobytes()), []).append(name)
    res = NcnnModel(out / "model.ncnn.param", out / "model.ncnn.bin")
    new_data, used, kept_float = {}, set(), {}
    for la in layers:
        if la.type not in CONV_TYPES:
            continue
        w = spans[la.name][2][0]
        names = by_weight.get((w.size, np.asarray(w, np.float32).tobytes()), [])
        cand = [n for n in names if n not in used] or names
        if not cand:
            res.float_layers.append(la.name)
            continue
        mname = cand[0]
        used.add(mname)
        q = info[mname]
        reason = _quant_reason(q)
        if reason:
            kept_float.setdefault(reason, []).append(mname)
            res.float_layers.append(la.name)
            continue
        dw = la.type == "ConvolutionDepthWise"
        groups = la.i(7, 1) if dw else 1
        wscale = (1.0 / q["weight_scale"]).astype(np.float32)
        if dw and wscale.size != groups:  # grouped, not depthwise: NCNN keeps one weight scale per group
            kept_float.setdefault("grouped conv with per-channel scales", []).append(mname)
            res.float_layers.append(la.name)
            continue
        bscale = np.float32(1.0 / q["act_scale"])
        wint = q["weight_int"].astype(np.int8).ravel()
        blob = struct.pack("<I", TAG_INT8) + wint.tobytes() + b"\0" * (_align4(wint.size) - wint.size)
        if la.i(5):  # bias, unchanged
            blob += np.asarray(spans[la.name][2][1], np.float32).tobytes()
        blob += wscale.tobytes() + np.array([bscale], np.float32).tobytes()
        la.params["8"] = "1" if dw else "2"
        new_data[la.name] = (blob, wscale, bscale)
        res.quantized.append((la.name, mname))
    for reason, names in kept_float.items():
        warnings.warn(f"NCNN INT8: {len(names)} quantized conv(s) stay float ({reason}): {names[:4]}...", stacklevel=2)
    missing = set(info) - used
    if missing:  # dead code pnnx dropped is not missing (YOLO26's one-to-one branch: export keeps the one-to-many one)
        missing = sorted(missing - unused_modules(float_model, missing, imgsz))
    if missing:
        raise ValueError(f"NCNN INT8: no pnnx conv layer matches the weights of {missing[:5]} ({len(missing)} total)")

    out.mkdir(parents=True, exist_ok=True)
    write_param(res.param, header, layers)
    with open(res.bin, "wb") as f:
        for la in layers:
            s, e, _ = spans[la.name]
            f.write(new_data[la.name][0] if la.name in new_data else buf[s:e])
    if write_table:  # ncnn2int8 table format: "<layer>_param_0 w_scales..." and "<layer> bottom_scale"
        res.table = out / "model.table"
        with open(res.table, "w") as f:
            for name, (_, ws, _) in new_data.items():
                f.write(f"{name}_param_0 " + " ".join(f"{v:.9g}" for v in ws) + "\n")
            for name, (_, _, bs) in new_data.items():
                f.write(f"{name} {float(bs):.9g}\n")
    return res
