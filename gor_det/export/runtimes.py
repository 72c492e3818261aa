"""Inference backends with gor_det's eval signature: ``backend(images) -> np.ndarray (B, 4 + nc, A)``.

``images``: float32 NCHW RGB in 0..1 (letterboxed by the caller). Output: Ultralytics' layout (xywh in input pixels,
then class scores). Each backend imports its runtime lazily and fails with a clear message on a missing or corrupt
model file (``FileNotFoundError("model file not found: ...")`` / :class:`ModelFileError`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gor_det.export._deps import ModelFileError, existing_file, require


def _as_batch(images) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected float32 NCHW RGB images (B, 3, H, W), got shape {x.shape}")
    return np.ascontiguousarray(x)


class OnnxBackend:
    """ONNX Runtime (CPU by default, ``threads`` intra-op threads). Static-batch models are run image by image."""

    def __init__(self, path, threads: int = 2, providers=None):
        ort = require("onnxruntime")
        self.path = existing_file(path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises InvalidProtobuf / Fail / InvalidGraph
            raise ModelFileError(f"{self.path} is not a valid ONNX model: {e}") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, images) -> np.ndarray:
        x = _as_batch(images)
        if self.static_batch is not None and x.shape[0] != self.static_batch:
            if self.static_batch != 1:
                raise ValueError(f"{self.path} has a static batch of {self.static_batch}, got {x.shape[0]} images")
            return np.concatenate([self(x[i : i + 1]) for i in range(x.shape[0])])
        return self.session.run([self.output_name], {self.input_name: x})[0]


class NcnnBackend:
    """NCNN (``ncnn`` Python package). ``param`` may be a ``*_ncnn_model`` folder; ``bin`` defaults to the .param's
    sibling ``.bin``. ``int8=None`` turns on ``opt.use_int8_inference`` when the .param has INT8 convs (``8=``).
    ``fp16=False`` disables NCNN's fp16/bf16 storage and arithmetic (exact fp32 for parity checks); ``True`` keeps
    NCNN's defaults (faster: 38 vs 78 ms for yolov8n at 320 px on this x86 VM; INT8 29 ms).
    ``threads`` is capped by ``OMP_NUM_THREADS`` when that is set: NCNN asked for more OpenMP threads than the
    environment allows ran ~10x slower here. ``options``: further ``ncnn.Option`` attributes to set, e.g.
    ``{"use_winograd_convolution": False}``."""

    def __init__(self, param, bin=None, int8: bool | None = None, threads: int = 2, fp16: bool = False,
                 options: dict | None = None):
        ncnn = require("ncnn")
        from gor_det.export.ncnn_export import read_bin, read_param

        p = Path(param)
        if p.is_dir():
            p = p / "model.ncnn.param"
        self.param = existing_file(p)
        self.bin = existing_file(Path(bin) if bin is not None else self.param.with_suffix(".bin"))
        header, layers = read_param(self.param)  # ModelFileError on a foreign / corrupt .param
        try:
            read_bin(layers, self.bin)  # size check against the .param (catches truncated / mismatched .bin)
        except NotImplementedError:
            pass  # a layer type gor_det cannot size: leave the check to ncnn
        has_int8 = any(la.type.startswith("Convolution") and la.i(8) for la in layers)
        self.int8 = has_int8 if int8 is None else bool(int8)
        if has_int8 and not self.int8:
            raise ValueError(f"{self.param} has INT8 layers: it needs int8=True")
        net = ncnn.Net()
        o = net.opt
        omp = os.environ.get("OMP_NUM_THREADS", "")
        o.num_threads = self.threads = min(threads, int(omp)) if omp.isdigit() and int(omp) > 0 else threads
        o.use_vulkan_compute = False
        o.use_int8_inference = self.int8
        if not fp16:
            o.use_fp16_packed = o.use_fp16_storage = o.use_fp16_arithmetic = False
            o.use_bf16_storage = False
        for k, v in (options or {}).items():
            if not hasattr(o, k):
                raise ValueError(f"ncnn.Option has no attribute {k!r}; see ncnn's option.h for the names")
            setattr(o, k, v)
        if net.load_param(str(self.param)) != 0:
            raise ModelFileError(f"{self.param} is not a valid NCNN .param file (ncnn load_param failed)")
        if net.load_model(str(self.bin)) != 0:
            raise ModelFileError(f"{self.bin} is not a valid NCNN .bin for {self.param.name} (ncnn load_model failed)")
        self.net, self._ncnn = net, ncnn
        self.input_name = net.input_names()[0]
        self.output_name = sorted(net.output_names())[0]  # Ultralytics sorts too (pnnx output order)

    def __call__(self, images) -> np.ndarray:
        x = _as_batch(images)
        outs = []
        for im in x:
            with self.net.create_extractor() as ex:
                ex.input(self.input_name, self._ncnn.Mat(np.ascontiguousarray(im)))
                ret, y = ex.extract(self.output_name)
                if ret != 0:
                    raise RuntimeError(f"ncnn extract('{self.output_name}') failed with code {ret}")
                outs.append(np.array(y, dtype=np.float32, copy=True))
        return np.stack(outs)


class TensorRTBackend:
    """TensorRT engine (``tensorrt`` Python API, TensorRT 10 tensor API; a CUDA GPU through torch). Loaded lazily:
    construction fails clearly where TensorRT or a GPU is missing (e.g. this project's CPU CI). Engines are device-
    and version-specific: build them on the target (Jetson) with :func:`gor_det.export.tensorrt.build_engine` or
    ``trtexec``."""

    def __init__(self, engine, device: int = 0):
        self.path = existing_file(engine)
        import torch

        trt = require("tensorrt", hint="TensorRT comes with JetPack on Jetson, or pip install tensorrt on a CUDA host")
        if not torch.cuda.is_available():
            raise RuntimeError("TensorRTBackend needs an NVIDIA GPU: torch.cuda.is_available() is False")
        self.trt, self.torch, self.device = trt, torch, torch.device("cuda", device)
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelFileError(
                f"{self.path} is not a valid TensorRT engine for this TensorRT/GPU (deserialize failed)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.output_name = "output0" if "output0" in self.outputs else self.outputs[0]

    def __call__(self, images) -> np.ndarray:
        torch, trt = self.torch, self.trt
        x = _as_batch(images)
        shape = tuple(self.engine.get_tensor_shape(self.inputs[0]))
        if shape[0] != -1 and shape[0] != x.shape[0]:
            return np.concatenate([self(x[i : i + 1]) for i in range(x.shape[0])])
        xt = torch.from_numpy(x).to(self.device)
        if -1 in shape:
            self.context.set_input_shape(self.inputs[0], tuple(xt.shape))
        self.context.set_tensor_address(self.inputs[0], xt.data_ptr())
        outs = {}
        for n in self.outputs:
            dt = torch.from_numpy(np.zeros(0, dtype=trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
            outs[n] = torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=dt, device=self.device)
            self.context.set_tensor_address(n, outs[n].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return outs[self.output_name].float().cpu().numpy()


class TorchBackend:
    """A PyTorch module with the backend signature (for parity against exported models)."""

    def __init__(self, model, device: str = "cpu"):
        self.model, self.device = model.eval(), device

    def __call__(self, images) -> np.ndarray:
        import torch

        with torch.no_grad():
            y = self.model(torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device))
        y = y[0] if isinstance(y, (tuple, list)) else y
        return y.float().cpu().numpy()


def load_backend(path, **kwargs):
    """Pick the backend from the file: ``.onnx`` -> ONNX Runtime, ``.param`` / ``*_ncnn_model`` -> NCNN,
    ``.engine`` / ``.plan`` -> TensorRT."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".param":
        return NcnnBackend(p, **kwargs)
    if p.suffix in (".engine", ".plan", ".trt"):
        return TensorRTBackend(p, **kwargs)
    if p.suffix == ".onnx":
        return OnnxBackend(p, **kwargs)
    existing_file(p)
    raise ValueError(f"cannot tell the runtime of {p} from its name (.onnx, .param / *_ncnn_model, .engine)")
