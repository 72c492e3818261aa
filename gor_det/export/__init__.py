"""gor_det.export: ONNX (FP, TensorRT-style Q/DQ, ONNX Runtime CPU INT8), NCNN (FP and INT8 from QAT scales), TensorRT, runtimes, parity.

Importing this package imports none of onnx, onnxruntime, onnxslim, pnnx, ncnn or tensorrt: every function imports
what it needs and raises ``RuntimeError("... pip install 'gor_det[export]'")`` when it is missing. Nothing here
imports ultralytics: the engine layer loads checkpoints and hands over a prepared ``nn.Module`` (Detect head in
export mode, fused; for INT8, the output of ``gor_det.quant.convert_for_export``).
"""

from gor_det.export._deps import ModelFileError
from gor_det.export.check_qdq import QdqReport, Violation, check_qdq
from gor_det.export.ncnn_export import NcnnModel, export_ncnn, export_ncnn_int8
from gor_det.export.onnx_export import export_onnx, export_onnx_qdq
from gor_det.export.ort_int8 import export_onnx_ort_int8
from gor_det.export.parity import ParityReport, compare_backends, compare_outputs, default_images, load_images
from gor_det.export.qdq import fold_qdq_weights
from gor_det.export.runtimes import NcnnBackend, OnnxBackend, TensorRTBackend, TorchBackend, load_backend
from gor_det.export.tensorrt import TensorRTUnavailable, build_engine, trtexec_command

__all__ = [
    "ModelFileError",
    "NcnnBackend",
    "NcnnModel",
    "OnnxBackend",
    "ParityReport",
    "QdqReport",
    "TensorRTBackend",
    "TensorRTUnavailable",
    "TorchBackend",
    "Violation",
    "build_engine",
    "check_qdq",
    "compare_backends",
    "compare_outputs",
    "default_images",
    "export_ncnn",
    "export_ncnn_int8",
    "export_onnx",
    "export_onnx_ort_int8",
    "export_onnx_qdq",
    "fold_qdq_weights",
    "load_backend",
    "load_images",
    "trtexec_command",
]
