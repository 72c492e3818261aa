"""TensorRT engine building (on the target: Jetson / a CUDA host) and the equivalent ``trtexec`` command.

TensorRT cannot be installed on the CPU development machine (the PyPI ``tensorrt`` is a stub that fetches from
NVIDIA's index, and engines need a GPU), so :func:`build_engine` raises :class:`TensorRTUnavailable` ("skipped: ...")
there; :func:`trtexec_command` gives the command to run on the Jetson.

A Q/DQ ONNX (``export_onnx_qdq``) is an *explicitly* quantized network: TensorRT takes the scales from the graph.
TensorRT 8.x/10.x: build with ``--int8 --fp16`` (int8 allowed where Q/DQ say so, fp16 for the rest); TensorRT 10 can
build it strongly typed instead (``--stronglyTyped``, which excludes --int8/--fp16; float layers then run in the
ONNX's dtype, fp32 unless the graph is fp16); TensorRT 11 is strongly typed only.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from gor_det.export._deps import existing_file


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing here: the step is skipped, build on the target instead."""


def trtexec_command(
    onnx_path,
    engine_path,
    int8: bool = True,
    fp16: bool = True,
    strongly_typed: bool = False,
    layer_info: str | None = "layers.json",
    workspace_mib: int | None = None,
) -> str:
    """The ``trtexec`` line for the Jetson, e.g.
    ``trtexec --onnx=m_qdq.onnx --int8 --fp16 --saveEngine=m.engine --verbose --dumpLayerInfo
    --profilingVerbosity=detailed --exportLayerInfo=layers.json``.

    ``strongly_typed``: TensorRT >= 10 alternative (``--stronglyTyped``; --int8/--fp16 are then dropped).
    ``layer_info``: adds the flags that show which layers got INT8 tactics (check ``layers.json`` for Int8 formats
    on every quantized conv); ``None`` omits them.
    """
    args = ["trtexec", f"--onnx={onnx_path}"]
    if strongly_typed:
        args.append("--stronglyTyped")
    else:
        args += (["--int8"] if int8 else []) + (["--fp16"] if fp16 else [])
    args.append(f"--saveEngine={engine_path}")
    if workspace_mib:
        args.append(f"--memPoolSize=workspace:{int(workspace_mib)}M")
    if layer_info:
        args += ["--verbose", "--dumpLayerInfo", "--profilingVerbosity=detailed", f"--exportLayerInfo={layer_info}"]
    return " ".join(shlex.quote(a) for a in args)


def build_engine(
    onnx_path, engine_path, int8: bool = True, fp16: bool = True, strongly_typed: bool = False, workspace_gib: float = 2
) -> Path:
    """Build a serialized engine with the ``tensorrt`` Python API (TensorRT 8.6 / 10.x). Returns ``engine_path``.

    Raises :class:`TensorRTUnavailable` ("skipped: ...") without TensorRT or a GPU, ``RuntimeError`` (one line, the
    parser errors joined by ``; ``) when TensorRT rejects the ONNX or fails to build it.
    """
    onnx_path = existing_file(onnx_path)
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            f"skipped: the tensorrt Python package is not installed ({e}); build on the target instead: "
            f"{trtexec_command(onnx_path, engine_path, int8, fp16, strongly_typed)}"
        ) from e
    try:
        import torch

        gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        gpu = False
    if not gpu:
        raise TensorRTUnavailable("skipped: no CUDA GPU visible; build on the target with trtexec")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errs = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs or 'no parser error given'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not strongly_typed:
        if int8 and hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)
        if fp16 and hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    return engine_path
