"""SIGTERM/SIGINT handlers survive a dangling alternate signal stack (what OpenVINO's CPU plugin leaves
behind when an engine made on the main thread is released on another). Each case runs in a fresh
process that signals itself: the control dies of SIGSEGV, edgepack's handlers run and unwind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from edgepack import signals

pytestmark = pytest.mark.skipif(signals.runs_on_alternate_stack(signal.SIGINT) is None,
                                reason="struct sigaction is only read on Linux x86-64/AArch64")

DANGLING_STACK = textwrap.dedent("""
    import ctypes, os, signal, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    def leave_dangling_alternate_stack():
        size = 1 << 16
        address = libc.mmap(None, size, 0x3, 0x22, -1, 0)  # read/write, private anonymous
        assert libc.sigaltstack(ctypes.byref(Stack(address, 0, size)), None) == 0
        assert libc.munmap(address, size) == 0
""")


def _run(body: str) -> subprocess.CompletedProcess[str]:
    script = DANGLING_STACK + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_a_plain_python_handler_dies_on_a_dangling_alternate_stack():
    """The control: CPython's SA_ONSTACK handler cannot even be entered."""
    result = _run("""
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        leave_dangling_alternate_stack()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    """)
    assert result.returncode == -signal.SIGSEGV, (result.returncode, result.stderr)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_installed_handlers_run_on_the_thread_stack(signum):
    result = _run(f"""
        from edgepack import signals
        signals.install({int(signum)}, lambda *_: (print("handled", flush=True), sys.exit(143)))
        assert signals.runs_on_alternate_stack({int(signum)}) is False
        leave_dangling_alternate_stack()
        os.kill(os.getpid(), {int(signum)})
        time.sleep(5)
    """)
    assert (result.returncode, result.stdout.strip()) == (143, "handled"), result.stderr


def test_install_returns_the_previous_handler_and_accepts_dispositions():
    previous = signals.install(signal.SIGUSR1, signal.SIG_IGN)
    try:
        assert signals.install(signal.SIGUSR1, lambda *_: None) == signal.SIG_IGN
        assert signals.runs_on_alternate_stack(signal.SIGUSR1) is False
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize(("signum", "code", "line"), [(signal.SIGTERM, 143, "edgepack: terminated"),
                                                       (signal.SIGINT, 130, "edgepack: interrupted")])
def test_cli_commands_unwind_on_a_dangling_alternate_stack(signum, code, line):
    """Every CLI command runs inside ``user_errors``: the signal becomes one line and its exit code."""
    result = _run(f"""
        import typer
        from edgepack.cli_support import user_errors
        try:
            with user_errors():
                leave_dangling_alternate_stack()
                os.kill(os.getpid(), {int(signum)})
                time.sleep(5)
        except typer.Exit as exit:
            sys.exit(exit.exit_code)
    """)
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.strip().splitlines()[-1] == line


def test_openvino_engine_released_on_another_thread_does_not_kill_the_cli():
    """The real trigger: a model compiled on the main thread, its last reference dropped on a worker thread."""
    pytest.importorskip("openvino")
    result = _run("""
        import gc, threading
        import numpy as np
        import openvino as ov
        from openvino import opset13 as ops
        import typer
        from edgepack.cli_support import user_errors

        parameter = ops.parameter([1, 8], np.float32)
        compiled = [ov.Core().compile_model(ov.Model([ops.relu(parameter)], [parameter]), "CPU")]

        def release():
            compiled.clear()
            gc.collect()

        try:
            with user_errors():
                worker = threading.Thread(target=release)
                worker.start()
                worker.join()
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        except typer.Exit as exit:
            sys.exit(exit.exit_code)
    """)
    assert result.returncode == 143, (result.returncode, result.stderr)
    assert result.stderr.strip().splitlines()[-1] == "edgepack: terminated"


# ------------------------------------------------------------------ interruptions a toolchain swallowed


def _export_that_gets_terminated(rewrap: bool):
    """An exporter whose toolchain catches the SIGTERM that lands in it, as OpenVINO's C++ converter does
    (``rewrap``: it raises its own error instead; otherwise it carries on as if nothing happened)."""
    from edgepack.exporters.ort.exporter import OrtExporter

    original = OrtExporter.export

    def export(self, *args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except BaseException:  # noqa: BLE001 - the toolchain's behaviour under test
            if rewrap:
                raise RuntimeError("Check 'false' failed at src/frontends/common/src/input_model.cpp:21") from None
        return original(self, *args, **kwargs)

    return export


@pytest.mark.parametrize("rewrap", [True, False], ids=["rewrapped", "swallowed"])
def test_an_interruption_a_toolchain_swallowed_still_stops_the_export(tmp_path, monkeypatch, rewrap):
    from edgepack import api
    from edgepack.errors import Terminated
    from edgepack.exporters.ort.exporter import OrtExporter

    monkeypatch.setattr(OrtExporter, "export", _export_that_gets_terminated(rewrap))
    before = signal.getsignal(signal.SIGTERM)
    with signals.listen(), pytest.raises(Terminated):
        api.export("demo:digits", ["host-ort"], out=tmp_path / "out", recipe_chain=["int8", "fp32"], cache=False)
    assert signal.getsignal(signal.SIGTERM) == before, "the previous handler is back"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing is published"
    signals.raise_if_interrupted()  # the record ends with listen(): a later export is not stopped by it
