"""Subprocess entry of the TFLite exporter: ``python -m edgepack.exporters.tflite.worker MODE REQUEST.json``.

The conversion toolchains run here, never in the parent process, because

* onnx2tf and litert-torch import TensorFlow, which must not be imported before torch in the parent
  (TensorFlow first, then ``torch._dynamo``, segfaults);
* onnx2tf calls ``sys.exit(1)`` on many failures and leaves global state behind;
* onnx2tf reaches for the internet (see :func:`_offline_sample_images`), which export must never do.

Modes:

``onnx2tf``
    Simplify the static ONNX with onnxslim (input shapes fixed), sanitise node names that TensorFlow
    rejects as scope names, make global ``AveragePool`` nodes ``GlobalAveragePool``, then run
    ``onnx2tf.convert`` with ``output_signaturedefs=True`` and, when the request asks for quantized
    files, onnx2tf's own quantizer fed only with the request's calibration arrays.
``calibrate``
    Calibrate the saved model an earlier ``onnx2tf`` run left in its output folder with the request's
    arrays (the TFLite converter configured as onnx2tf configures it, stopped after calibration): a float
    ``.tflite`` carrying the activation ranges, from which ``selective-int8`` quantizes mixed-precision
    variants without converting or calibrating again.
``selective-int8``
    Quantize such a calibrated model to int8 with the TFLite converter's MLIR quantizer, keeping the ops
    named in ``float_nodes`` (output tensor names) in float (mixed precision).
``litert-torch``
    Load a ``torch.export`` program (``.pt2``) and convert it with ``litert_torch.convert(...).export()``.

The request is a JSON file written by :mod:`edgepack.exporters.tflite.exporter`; the worker writes a JSON result
(``{"ok": true, ...}`` or ``{"ok": false, "error": ONE_LINE}``) to the path the request names and exits
0 on success, 1 on a conversion failure, 3 when an optional converter is not installed. Everything the
toolchains print goes to this process's stdout/stderr, which the parent captures into a log file.

This module imports only the standard library, numpy and :mod:`edgepack._text` (standard library only) at
import time, so that its network guard can
be installed (and tested) before any toolchain is imported. The onnx2tf mode never imports torch (it
does not need it, and ``torch._dynamo`` after TensorFlow would crash); the litert-torch mode imports
torch and ``torch._dynamo`` before anything that pulls TensorFlow.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgepack._text import first_line

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_REQUEST = 2
EXIT_MISSING = 3

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
ONNX2TF_SAMPLE_SHAPE = (20, 128, 128, 3)
"""Shape of onnx2tf's downloadable sample-image array (20 MS-COCO images, NHWC, float32 in 0..1)."""
CALIBRATION_MEAN = 0.0
CALIBRATION_STD = 1.0
"""onnx2tf feeds ``(data - mean) / std`` to the TFLite converter's calibration; edgepack's calibration
data is already what the model takes, so it goes through unchanged."""

_TF_SCOPE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")
_TF_SCOPE_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.\\/>-]")


# --------------------------------------------------------------------------------------------------
# Network guard
# --------------------------------------------------------------------------------------------------


class NetworkBlockedError(ConnectionRefusedError):
    """Raised for any non-loopback network access after :func:`install_network_guard`."""


def is_loopback_host(host: object) -> bool:
    """True for loopback addresses and names (``127.0.0.0/8``, ``::1``, ``localhost``) and ``None``."""
    if host is None:
        return True  # getaddrinfo(None, port) resolves to the local host
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip().strip("[]").split("%", 1)[0].lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _blocked(what: str, host: object) -> NetworkBlockedError:
    return NetworkBlockedError(f"edgepack: network access is disabled during conversion ({what} {host!r})")


def _check_address(sock: socket.socket, address: Any, what: str) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) and address else address
        if not is_loopback_host(host):
            raise _blocked(what, host)


def install_network_guard() -> None:
    """Make every non-loopback connection attempt from Python code in this process raise.

    Patches name resolution (``socket.getaddrinfo``, ``gethostbyname``), ``socket.create_connection``
    and ``socket.socket.connect`` / ``connect_ex`` / ``sendto`` (``requests``/``urllib3``/``urllib`` all go
    through these). Unix sockets and loopback addresses keep working. Idempotent. Native code that opens
    sockets itself (not Python's ``socket`` module) is not covered; onnx2tf's only download uses
    ``requests``.
    """
    if getattr(socket, "_edgepack_guarded", False):
        return
    original_getaddrinfo = socket.getaddrinfo
    original_gethostbyname = socket.gethostbyname
    original_create_connection = socket.create_connection
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_sendto = socket.socket.sendto

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback_host(host):
            raise _blocked("resolve", host)
        return original_getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        if not is_loopback_host(host):
            raise _blocked("resolve", host)
        return original_gethostbyname(host)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        if not is_loopback_host(address[0]):
            raise _blocked("connect", address[0])
        return original_create_connection(address, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        _check_address(self, address, "connect")
        return original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(self, address, "connect")
        return original_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        if args:
            _check_address(self, args[-1], "send to")
        return original_sendto(self, data, *args)

    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.create_connection = create_connection
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]
    socket._edgepack_guarded = True  # type: ignore[attr-defined]
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        os.environ.pop(proxy, None)


# --------------------------------------------------------------------------------------------------
# ONNX preparation (onnxslim + name sanitising)
# --------------------------------------------------------------------------------------------------


def _simplify(model: Any, input_shapes: dict[str, list[int]], notes: list[str]) -> Any:
    """onnxslim with the input shapes pinned; on failure keep the model as it is and say so."""
    try:
        import onnxslim

        shapes = [f"{name}:{','.join(str(d) for d in dims)}" for name, dims in input_shapes.items()]
        slimmed = onnxslim.slim(model, input_shapes=shapes or None)
    except Exception as exc:  # noqa: BLE001 - simplification is best-effort
        notes.append(f"onnxslim skipped: {type(exc).__name__}: {first_line(exc, 400)}")
        return model
    return slimmed if slimmed is not None else model


def _tf_acceptable(name: str) -> bool:
    """Whether ``name`` is a valid TF scope name once onnx2tf's own fixes (``:`` -> ``__``, leading
    ``/`` -> ``wa/``) are applied."""
    fixed = re.sub(r"^/", "wa/", name.replace(":", "__"))
    return bool(fixed) and bool(_TF_SCOPE_NAME.match(fixed))


def sanitize_node_names(model: Any) -> int:
    """Rename ONNX nodes whose names TensorFlow rejects as scope names; returns how many were renamed.

    TF requires ``^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$``; onnx2tf itself only fixes ``:`` and a leading
    ``/``, so names such as ``conv@1`` or ``layer 1`` can fail the SavedModel export. Empty names are
    filled in, and new names are kept unique. Tensor names are left alone.
    """
    nodes = list(model.graph.node)
    used = {node.name for node in nodes}
    renamed = 0
    for index, node in enumerate(nodes):
        if _tf_acceptable(node.name):
            continue
        base = _TF_SCOPE_BAD_CHARS.sub("_", node.name) or f"{node.op_type}_{index}"
        if not _TF_SCOPE_NAME.match(base):
            base = f"n{base}"
        candidate, suffix = base, 1
        while candidate in used:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        used.add(candidate)
        node.name = candidate
        renamed += 1
    return renamed


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _static_shapes(model: Any) -> dict[str, list[int]]:
    """Tensor name -> shape for every tensor whose dims are all known (after ONNX shape inference)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without shapes nothing is rewritten
        return {}
    shapes: dict[str, list[int]] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [int(d.dim_value) for d in dims]
    return shapes


def globalize_average_pools(model: Any) -> int:
    """Replace each ``AveragePool`` whose kernel covers its whole (static) input without padding,
    dilation or ``auto_pad`` by the equivalent ``GlobalAveragePool``; returns how many were replaced.

    onnx2tf lowers ``AveragePool`` to LiteRT ``AVERAGE_POOL_2D`` and ``GlobalAveragePool`` to ``MEAN``.
    XNNPACK (ai-edge-litert 2.3) runs ``MEAN`` in int8 but not ``AVERAGE_POOL_2D``, so an int8 model with
    a final 4x4 average pool was cut into two delegate partitions with a builtin kernel between them
    (0.35x the speed of fp32 on the demo digits CNN). The float result is identical either way.
    """
    shapes = _static_shapes(model)
    replaced = 0
    for node in model.graph.node:
        if node.op_type != "AveragePool" or len(node.output) != 1:
            continue
        shape = shapes.get(node.input[0])
        kernel = list(_attribute(node, "kernel_shape", []))
        if shape is None or len(shape) < 3 or kernel != shape[2:]:
            continue
        if any(_attribute(node, "pads", [])) or any(d != 1 for d in _attribute(node, "dilations", [])):
            continue
        auto_pad = _attribute(node, "auto_pad", b"NOTSET")
        if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) not in ("NOTSET", "VALID"):
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]
        replaced += 1
    return replaced


def decompose_hard_sigmoids(model: Any) -> int:
    """Rewrite each ``HardSigmoid(x; alpha, beta)`` as ``Clip(6*alpha*x + 6*beta, 0, 6) * (1/6)``;
    returns how many were rewritten.

    onnx2tf lowers ``HardSigmoid`` to LiteRT ``RELU_0_TO_1``, which XNNPACK (ai-edge-litert 2.3) runs in
    neither float nor int8: the 9 squeeze-excite gates of mobilenet_v3_small cut even its fp32 graph into
    10 delegate partitions. The rewritten form becomes ``MUL``/``ADD`` with a fused ``RELU6`` (the
    converter folds the constants), one partition: fp32 1.3x faster here. (Its ``HardSwish`` becomes
    ``HARD_SWISH``, which XNNPACK runs in float but not in int8; decomposing that one too made the int8
    graph one partition, but the float model lost its fused kernel, so it is left alone.)
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    used = {name for node in graph.node for name in (*node.input, *node.output, node.name)}
    used |= {init.name for init in graph.initializer}

    def fresh(base: str) -> str:
        candidate, suffix = base, 1
        while candidate in used:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        used.add(candidate)
        return candidate

    def constant(base: str, value: float) -> str:
        name = fresh(base)
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
        return name

    nodes: list[Any] = []
    rewritten = 0
    for node in graph.node:
        if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        alpha = float(_attribute(node, "alpha", 0.2))
        beta = float(_attribute(node, "beta", 0.5))
        base = _TF_SCOPE_BAD_CHARS.sub("_", node.name or "hard_sigmoid").lstrip("/") or "hard_sigmoid"
        scaled = fresh(f"{base}_scaled")
        shifted = fresh(f"{base}_shifted")
        clipped = fresh(f"{base}_relu6")
        nodes += [
            helper.make_node(
                "Mul", [node.input[0], constant(f"{base}_6alpha", 6.0 * alpha)], [scaled], name=fresh(f"{base}/mul")
            ),
            helper.make_node(
                "Add", [scaled, constant(f"{base}_6beta", 6.0 * beta)], [shifted], name=fresh(f"{base}/add")
            ),
            helper.make_node(
                "Clip", [shifted, constant(f"{base}_zero", 0.0), constant(f"{base}_six", 6.0)], [clipped],
                name=fresh(f"{base}/relu6"),
            ),
            helper.make_node("Mul", [clipped, constant(f"{base}_sixth", 1.0 / 6.0)], list(node.output),
                             name=fresh(f"{base}/div6")),
        ]
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def prepare_onnx(source: Path, target: Path, input_shapes: dict[str, list[int]], notes: list[str]) -> Path:
    """Write the simplified, name-sanitised copy of ``source`` (global average pools made global, hard
    sigmoids decomposed) to ``target``."""
    import onnx

    model = onnx.load(str(source))
    model = _simplify(model, input_shapes, notes)
    renamed = sanitize_node_names(model)
    if renamed:
        notes.append(f"renamed {renamed} ONNX node(s) whose names TensorFlow rejects")
    pools = globalize_average_pools(model)
    if pools:
        notes.append(
            f"{pools} whole-input AveragePool node(s) converted as GlobalAveragePool (LiteRT MEAN, which "
            "XNNPACK also runs in int8)"
        )
    sigmoids = decompose_hard_sigmoids(model)
    if sigmoids:
        notes.append(
            f"{sigmoids} HardSigmoid node(s) converted as Clip(6*alpha*x + 6*beta, 0, 6) / 6 (XNNPACK has no "
            "RELU_0_TO_1)"
        )
    onnx.save(model, str(target))
    return target


# --------------------------------------------------------------------------------------------------
# onnx2tf
# --------------------------------------------------------------------------------------------------


def _offline_sample_images(path: str | None) -> Callable[[], np.ndarray]:
    """A stand-in for ``onnx2tf.utils.common_functions.download_test_image_data``.

    What onnx2tf 1.28.8 does (read from its source): ``download_test_image_data()`` returns
    ``calibration_image_sample_data_20x128x128x3_float32.npy`` from the *current directory* if that
    file exists, else downloads it with ``requests.get`` from GitHub releases (then wasabisys.com on
    timeout). ``onnx2tf.convert`` calls it in two places:

    1. always, before its ONNX dummy inference, when every model input is 4-D with a static batch
       <= 20, static H/W and 3 channels after the NCHW->NHWC transpose (``onnx2tf.py`` ~L1074-1093).
       This happens for plain fp32 conversions of any RGB image model, and passing
       ``custom_input_op_name_np_data_path`` does NOT prevent it (the custom data only replaces the
       downloaded images later, inside ``dummy_onnx_inference``);
    2. for full-int8 output, when no ``custom_input_op_name_np_data_path`` is given (~L1729-1734).

    So the worker replaces the function (onnx2tf imports it by name into ``onnx2tf.onnx2tf``) with
    this one, which returns the caller's calibration images (already NHWC, saved by the parent) or a
    deterministic synthetic array of the same shape and range; int8 callers must always pass
    calibration data through ``custom_input_op_name_np_data_path``. The network guard is the second
    line of defence.
    """

    def sample_images() -> np.ndarray:
        if path:
            data = np.load(path, allow_pickle=False).astype(np.float32)
            if data.ndim == 4 and data.shape[-1] == 3 and len(data) > 0:
                return data[: ONNX2TF_SAMPLE_SHAPE[0]]
        return np.random.default_rng(0).random(ONNX2TF_SAMPLE_SHAPE, dtype=np.float32)

    return sample_images


def _disable_onnx2tf_downloads(sample_path: str | None) -> None:
    import onnx2tf.onnx2tf as converter_module
    import onnx2tf.utils.common_functions as common

    replacement = _offline_sample_images(sample_path)
    converter_module.download_test_image_data = replacement  # type: ignore[attr-defined]
    common.download_test_image_data = replacement  # type: ignore[attr-defined]


def _quantize_options(request: dict[str, Any], calib: list[list[Any]]) -> dict[str, Any]:
    """onnx2tf keyword arguments for the request's ``quantize`` entry (none for a float-only request).

    Static int8 is only ever calibrated on the request's arrays: without them onnx2tf would calibrate
    on its (here replaced) sample images with ImageNet normalisation, which would silently be wrong.
    """
    quantize = request.get("quantize")
    if not quantize:
        return {"non_verbose": True}
    if quantize.get("integer") and not calib:
        raise RuntimeError("static int8 needs calibration data; the request has none")
    io_dtype = quantize.get("io_dtype", "int8")
    return {
        # "warn" rather than non_verbose: onnx2tf only *warns* when one of its quantized files fails,
        # and the parent reports that warning's exception line
        "verbosity": "warn",
        "output_dynamic_range_quantized_tflite": bool(quantize.get("dynamic")),
        "output_integer_quantized_tflite": bool(quantize.get("integer")),
        "quant_type": quantize.get("quant_type", "per-channel"),
        "input_quant_dtype": io_dtype,
        "output_quant_dtype": io_dtype,
    }


def run_onnx2tf(request: dict[str, Any]) -> dict[str, Any]:
    """Prepare the ONNX file, convert it with onnx2tf, and report the produced ``.tflite`` files.

    onnx2tf names its outputs after the input file, so the prepared file is ``model.onnx`` and the
    results are ``model_float32.tflite``, ``model_float16.tflite`` and, when quantizing, the files named in
    ``request["onnx2tf_files"]`` (variant -> file suffix, the parent's
    :data:`edgepack.exporters.tflite.quant.ONNX2TF_FILES`; this module imports nothing of edgepack's); the
    result maps each variant written to its path.
    """
    notes: list[str] = []
    out_dir = Path(request["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare_onnx(
        Path(request["onnx"]), out_dir.parent / "model.onnx", request.get("input_shapes", {}), notes
    )
    calib = [[name, path, CALIBRATION_MEAN, CALIBRATION_STD] for name, path in request.get("calib", {}).items()]
    options = _quantize_options(request, calib)
    import onnx2tf

    _disable_onnx2tf_downloads(request.get("sample_images"))
    keep_ncw = request.get("keep_ncw_input_names") or None
    keep_nhwc = request.get("keep_nhwc_input_names") or None
    onnx2tf.convert(
        input_onnx_file_path=str(prepared),
        output_folder_path=str(out_dir),
        output_signaturedefs=True,
        # ONNX NonMaxSuppression returns only the selected boxes; onnx2tf's default pads them to the maximum with
        # index 0, which turns every padding row into a copy of box 0 (--postprocess nms counts the rows).
        output_nms_with_dynamic_tensor=True,
        custom_input_op_name_np_data_path=calib or None,
        keep_ncw_or_nchw_or_ncdhw_input_names=keep_ncw,
        keep_nwc_or_nhwc_or_ndhwc_input_names=keep_nhwc,
        replace_to_pseudo_operators=request.get("pseudo_ops") or None,
        **options,
    )
    files = {
        variant: str(out_dir / f"model_{suffix}.tflite")
        for variant, suffix in request["onnx2tf_files"].items()
        if (out_dir / f"model_{suffix}.tflite").exists()
    }
    if not files:
        raise RuntimeError("onnx2tf finished without writing a .tflite file")
    return {"ok": True, "files": files, "notes": notes}


# --------------------------------------------------------------------------------------------------
# Selective (mixed-precision) int8: the TFLite converter's own quantizer with a denylist
# --------------------------------------------------------------------------------------------------


def _int8_converter(saved_model: Path, calib: list[list[Any]], quant_type: str) -> Any:
    """The TFLite converter as onnx2tf configures it for ``model_integer_quant.tflite`` (from the saved
    model in its output folder; ``Optimize.DEFAULT``, builtin int8 + TF Select ops, per-channel unless
    ``per-tensor``, batch matmuls not unfolded), with a representative dataset of the request's
    calibration arrays fed as ``(data - mean) / std``."""
    import tensorflow as tf

    arrays = {name: (np.load(path, allow_pickle=False), mean, std) for name, path, mean, std in calib}
    count = min(len(data) for data, _, _ in arrays.values())

    def representative_dataset() -> Any:
        for index in range(count):
            sample = {
                name: tf.convert_to_tensor(((data[index : index + 1] - mean) / std).astype(np.float32))
                for name, (data, mean, std) in arrays.items()
            }
            # one input: positional, so a signature key onnx2tf renamed cannot break the feed
            yield list(sample.values()) if len(sample) == 1 else sample

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.SELECT_TF_OPS]
    converter._experimental_disable_per_channel = quant_type == "per-tensor"  # noqa: SLF001 - as onnx2tf does
    converter.unfold_batchmatmul = False  # onnx2tf's default (enable_batchmatmul_unfold=False)
    converter.representative_dataset = representative_dataset
    return converter


def run_calibrate(request: dict[str, Any]) -> dict[str, Any]:
    """A float .tflite of onnx2tf's saved model (``request["saved_model"]``) carrying the activation ranges
    calibrated on ``request["calib"]`` (the converter's ``_experimental_calibrate_only`` output): the input
    of :func:`run_selective_int8`."""
    if not (Path(request["saved_model"]) / "saved_model.pb").exists():
        raise RuntimeError(f"no saved model in {request['saved_model']} (onnx2tf writes one beside its .tflite files)")
    calib = [[name, path, CALIBRATION_MEAN, CALIBRATION_STD] for name, path in request["calib"].items()]
    if not calib:
        raise RuntimeError("calibration needs calibration data; the request has none")
    converter = _int8_converter(Path(request["saved_model"]), calib, request.get("quant_type", "per-channel"))
    converter._experimental_calibrate_only = True  # noqa: SLF001 - the converter's documented debug path
    output = Path(request["output"])
    output.write_bytes(bytes(converter.convert()))
    return {"ok": True, "files": {"int8-calibrated": str(output)}, "notes": []}


def run_selective_int8(request: dict[str, Any]) -> dict[str, Any]:
    """Quantize a calibrated model to int8 (float I/O) keeping the ops whose output tensors are named in
    ``request["float_nodes"]`` in float: the MLIR quantizer's ``denylisted_nodes``, the mechanism behind
    ``tf.lite.experimental.QuantizationDebugger``'s selective quantization."""
    from tensorflow.lite.python import convert

    calibrated = Path(request["calibrated"]).read_bytes()
    quantized = convert.mlir_quantize(
        calibrated,
        disable_per_channel=request.get("quant_type") == "per-tensor",
        fully_quantize=False,
        denylisted_nodes=list(request["float_nodes"]),
    )
    output = Path(request["output"])
    output.write_bytes(quantized)
    return {"ok": True, "files": {"int8-mixed": str(output)}, "notes": []}


# --------------------------------------------------------------------------------------------------
# litert-torch
# --------------------------------------------------------------------------------------------------


class ConverterMissing(Exception):
    """An optional converter is not importable in this environment."""


def run_litert_torch(request: dict[str, Any]) -> dict[str, Any]:
    """Convert a saved ``torch.export`` program with litert-torch (torch is imported before any TF)."""
    import torch
    import torch._dynamo  # noqa: F401 - must precede TensorFlow (imported by litert_torch)

    try:
        import litert_torch
    except ImportError as exc:
        raise ConverterMissing(f"litert-torch not importable: {first_line(exc, 400)}") from exc
    program = torch.export.load(request["program"])
    module = program.module()
    sample_args = tuple(torch.from_numpy(np.load(path, allow_pickle=False)) for path in request["sample_args"])
    edge_model = litert_torch.convert(module, sample_args)
    edge_model.export(request["output"])
    return {"ok": True, "files": {request["precision"]: request["output"]}, "notes": []}


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------

MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "onnx2tf": run_onnx2tf,
    "calibrate": run_calibrate,
    "selective-int8": run_selective_int8,
    "litert-torch": run_litert_torch,
}


def _write_result(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    tmp.replace(path)


def _run(mode: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    try:
        return EXIT_OK, MODES[mode](request)
    except ConverterMissing as exc:
        return EXIT_MISSING, {"ok": False, "missing": True, "error": str(exc)}
    except SystemExit as exc:  # onnx2tf calls sys.exit(1) after printing "ERROR: ..." lines
        return EXIT_FAILED, {"ok": False, "error": f"converter exited with status {exc.code}"}
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        traceback.print_exc()
        return EXIT_FAILED, {"ok": False, "error": f"{type(exc).__name__}: {first_line(exc, 400)}"}


def main(argv: list[str] | None = None) -> int:
    """Run one conversion request; see the module docstring for the protocol."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in MODES:
        sys.stderr.write(f"usage: python -m edgepack.exporters.tflite.worker {{{','.join(MODES)}}} REQUEST.json\n")
        return EXIT_BAD_REQUEST
    install_network_guard()
    request = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    code, result = _run(argv[0], request)
    _write_result(Path(request["result"]), result)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
