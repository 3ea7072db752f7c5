"""One RKNN-Toolkit2 session, run by the ``rknn`` venv's interpreter (``python worker.py LOG``).

It imports only the standard library, numpy and the toolkit (never edgepack: the venv has numpy 1.26). Requests
arrive as JSON lines on stdin; each reply is one JSON line on the process's original stdout, which is kept for
the protocol: file descriptors 1 and 2 are pointed at ``LOG`` first, so whatever the toolkit and its native
libraries print lands there. The simulator runs only a model built in the same session, so one process builds
(``build``) and then serves the host predictor (``run``) until ``quit`` or end of input.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata

import numpy as np


def _build(rknn_class, request):
    rknn = rknn_class(verbose=False)
    steps = [
        ("config", lambda: rknn.config(**request["config"])),
        ("load_onnx", lambda: rknn.load_onnx(model=request["onnx"], inputs=request["inputs"],
                                             input_size_list=request["input_size_list"])),
        ("build", lambda: rknn.build(do_quantization=request["quantize"], dataset=request.get("dataset"))),
        ("export_rknn", lambda: rknn.export_rknn(request["output"])),
        ("init_runtime (simulator)", lambda: rknn.init_runtime()),
    ]
    for name, step in steps:
        ret = step()
        if ret not in (None, 0):
            rknn.release()
            raise RuntimeError(f"{name} returned {ret}")
    return rknn, {"toolkit": metadata.version("rknn-toolkit2")}


def _run(rknn, request):
    arrays = [np.load(path) for path in request["inputs"]]
    formats = ["nchw" if array.ndim == 4 else "nhwc" for array in arrays]
    outputs = rknn.inference(inputs=arrays, data_format=formats)
    if outputs is None:
        raise RuntimeError("inference returned no outputs")
    paths = []
    for index, value in enumerate(outputs):
        path = os.path.join(request["out_dir"], f"out{index}.npy")
        np.save(path, np.asarray(value))
        paths.append(path)
    return {"outputs": paths}


def main() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    log = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    from rknn.api import RKNN

    session = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "quit":
                break
            if request["op"] == "build":
                if session is not None:
                    session.release()
                session, reply = _build(RKNN, request)
            elif request["op"] == "run":
                if session is None:
                    raise RuntimeError("no model built in this session")
                reply = _run(session, request)
            else:
                raise RuntimeError(f"unknown request {request['op']!r}")
            reply = {"ok": True, **reply}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller as one line
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        protocol.write(json.dumps(reply) + "\n")
    if session is not None:
        session.release()


if __name__ == "__main__":
    main()
