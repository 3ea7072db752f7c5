"""No network at export time: every non-loopback connection is refused during a full export."""

from __future__ import annotations

import socket

import pytest

from edgepack import api

LOOPBACK_PREFIXES = ("127.", "::1", "localhost")


@pytest.fixture()
def no_network(monkeypatch):
    attempts: list[str] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family == socket.AF_UNIX or str(host).startswith(LOOPBACK_PREFIXES):
            return real_connect(self, address)
        attempts.append(str(address))
        raise OSError(f"network access blocked by the test: {address}")

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is None or str(host).startswith(LOOPBACK_PREFIXES):
            return real_getaddrinfo(host, *args, **kwargs)
        attempts.append(f"dns:{host}")
        raise socket.gaierror(f"name resolution blocked by the test: {host}")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


def test_export_to_every_host_target_is_offline(tmp_path, no_network):
    targets = ["host-ort", "x86-openvino", "android-pixel8"]
    result = api.export("demo:digits", targets, out=tmp_path)
    assert result.ok, {r.profile.id: r.error for r in result.results}
    assert no_network == [], f"something tried to reach the network: {no_network}"
