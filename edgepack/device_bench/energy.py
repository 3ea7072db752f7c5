"""Energy and temperature sensors: Intel/AMD RAPL (powercap sysfs), Jetson ``tegrastats`` power rails,
and thermal zones.

A meter is started before the timed loop and stopped after it; :meth:`EnergyMeter.stop` returns the
energy in millijoules, or ``None`` with the reason it could not be measured. Readings are whole-device
(RAPL: CPU packages; tegrastats: the board's input rail), so they include anything else running; the
``method`` string says which sensor was used.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POWERCAP_ROOT = Path("/sys/class/powercap")
THERMAL_ROOT = Path("/sys/class/thermal")
TEGRASTATS_INTERVAL_MS = 100
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")
"""Rails that carry a Jetson module's total input power, newest naming first."""
_RAIL = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?![\w.])")


@dataclass(frozen=True)
class EnergyReading:
    """Energy over a measured interval, or why there is none."""

    mj: float | None
    method: str | None = None
    reason: str | None = None


class EnergyMeter(ABC):
    """Measures the energy used between :meth:`start` and :meth:`stop`."""

    @abstractmethod
    def start(self) -> None: ...

    def poll(self) -> None:  # noqa: B027 - optional hook
        """Called about once a second during long runs (lets counters that wrap be accumulated)."""

    @abstractmethod
    def stop(self) -> EnergyReading: ...


class UnavailableMeter(EnergyMeter):
    """No sensor: always reports ``None`` with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def start(self) -> None:
        return None

    def stop(self) -> EnergyReading:
        return EnergyReading(None, reason=self.reason)


# --------------------------------------------------------------------------------------------------
# RAPL
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplDomain:
    """One top-level RAPL package domain (``intel-rapl:N``)."""

    name: str
    energy_path: Path
    max_range_uj: int


def wrap_delta_uj(start: int, end: int, max_range_uj: int) -> int:
    """Energy between two counter readings; the counter wraps to 0 after ``max_range_uj``."""
    return end - start if end >= start else end + (max_range_uj + 1) - start


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def rapl_domains(root: Path = POWERCAP_ROOT) -> list[RaplDomain] | str:
    """The readable package domains under ``root``, or the reason there are none.

    Sub-zones (``intel-rapl:0:0`` core, uncore, dram) and ``psys`` are left out: they overlap the
    package counters.
    """
    if not root.is_dir():
        return f"{root} does not exist (no powercap driver, or not exposed in this container)"
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not zones:
        return f"no RAPL domains under {root} (not an Intel/AMD host, or the RAPL driver is not loaded)"
    domains: list[RaplDomain] = []
    for zone in zones:
        try:
            name = (zone / "name").read_text().strip()
            if not name.startswith("package"):
                continue
            _read_int(zone / "energy_uj")
            domains.append(RaplDomain(name, zone / "energy_uj", _read_int(zone / "max_energy_range_uj")))
        except PermissionError:
            return f"permission denied reading {zone / 'energy_uj'} (root only since Linux 5.10; run as root)"
        except (OSError, ValueError) as exc:
            return f"cannot read {zone}: {exc}"
    return domains or f"no RAPL package domain under {root}"


class RaplMeter(EnergyMeter):
    """Sums package energy counters, accumulating on every :meth:`poll` so that a wrap is never missed
    (a counter wraps after ``max_energy_range_uj``, minutes at full load on some parts)."""

    def __init__(self, domains: Sequence[RaplDomain]) -> None:
        self.domains = tuple(domains)
        self._last: list[int] = []
        self._total_uj = 0
        self._error: str | None = None

    def _read(self) -> list[int]:
        return [_read_int(d.energy_path) for d in self.domains]

    def start(self) -> None:
        self._total_uj = 0
        self._error = None
        self._last = self._read()

    def poll(self) -> None:
        if self._error is not None:
            return
        try:
            now = self._read()
        except (OSError, ValueError) as exc:
            self._error = f"RAPL counter became unreadable: {exc}"
            return
        self._total_uj += sum(wrap_delta_uj(a, b, d.max_range_uj) for a, b, d in zip(self._last, now, self.domains))
        self._last = now

    def stop(self) -> EnergyReading:
        self.poll()
        if self._error is not None:
            return EnergyReading(None, reason=self._error)
        names = "+".join(d.name for d in self.domains)
        return EnergyReading(self._total_uj / 1000.0, method=f"RAPL {names} (whole package, other load included)")


# --------------------------------------------------------------------------------------------------
# tegrastats (Jetson)
# --------------------------------------------------------------------------------------------------


def parse_tegrastats_line(line: str) -> dict[str, tuple[float, float]]:
    """Power rails of one tegrastats line: rail -> (instant mW, running average mW).

    Understands ``VDD_IN 5000mW/5000mW`` (JetPack 5/6) and ``POM_5V_IN 2516/2516`` (older releases);
    memory figures such as ``RAM 2180/7764MB`` are not rails and are skipped.
    """
    return {name: (float(now), float(avg)) for name, now, avg in _RAIL.findall(line)}


def input_power_mw(lines: Iterable[str]) -> tuple[list[float], str] | str:
    """Instant total-input power of each line that has one, and the rail used; or the reason there is none."""
    rails = [parse_tegrastats_line(line) for line in lines]
    rails = [r for r in rails if r]
    if not rails:
        return "tegrastats printed no power rails"
    seen = sorted({name for r in rails for name in r})
    rail = next((name for name in INPUT_RAILS if name in seen), None)
    if rail is None:
        return f"no total-input rail ({'/'.join(INPUT_RAILS)}) in tegrastats output; rails seen: {', '.join(seen)}"
    return [r[rail][0] for r in rails if rail in r], rail


@dataclass
class _Collected:
    lines: list[str] = field(default_factory=list)


class TegrastatsMeter(EnergyMeter):
    """Runs ``tegrastats --interval 100`` during the measurement; energy = mean input power x duration."""

    def __init__(self, command: Sequence[str] = ("tegrastats",), interval_ms: int = TEGRASTATS_INTERVAL_MS) -> None:
        self.command = [*command, "--interval", str(interval_ms)]
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._collected = _Collected()
        self._started = 0.0
        self._error: str | None = None

    def start(self) -> None:
        self._collected = _Collected()
        try:
            self._process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
            )
        except OSError as exc:
            self._process, self._error = None, f"cannot start {self.command[0]}: {exc}"
            return
        self._thread = threading.Thread(target=self._drain, args=(self._process, self._collected), daemon=True)
        self._thread.start()
        self._started = time.perf_counter()

    @staticmethod
    def _drain(process: subprocess.Popen[str], sink: _Collected) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sink.lines.append(line)

    def stop(self) -> EnergyReading:
        seconds = time.perf_counter() - self._started
        if self._process is None:
            return EnergyReading(None, reason=self._error or "tegrastats was not started")
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        power = input_power_mw(self._collected.lines)
        if isinstance(power, str):
            return EnergyReading(None, reason=power)
        samples, rail = power
        if len(samples) < 2:
            return EnergyReading(None, reason=f"only {len(samples)} tegrastats sample(s); run longer than 0.2 s")
        mean_mw = sum(samples) / len(samples)
        return EnergyReading(mean_mw * seconds, method=f"tegrastats {rail} mean of {len(samples)} samples x duration")


def open_meter(powercap_root: Path = POWERCAP_ROOT) -> EnergyMeter:
    """The best available meter on this machine: RAPL, else tegrastats, else one that says why not."""
    domains = rapl_domains(powercap_root)
    if not isinstance(domains, str):
        return RaplMeter(domains)
    if shutil.which("tegrastats"):
        return TegrastatsMeter()
    return UnavailableMeter(f"no energy sensor: RAPL: {domains}; tegrastats: not on PATH")


# --------------------------------------------------------------------------------------------------
# Thermal zones
# --------------------------------------------------------------------------------------------------


def read_thermal_zones(root: Path = THERMAL_ROOT) -> dict[str, float] | str:
    """Zone -> degrees Celsius for every readable ``thermal_zone*``, or the reason there are none."""
    zones = sorted(root.glob("thermal_zone*")) if root.is_dir() else []
    if not zones:
        return f"no thermal zones under {root}"
    temps: dict[str, float] = {}
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip()
            temps[f"{zone.name}:{kind}"] = _read_int(zone / "temp") / 1000.0
        except (OSError, ValueError):
            continue
    return temps or f"no readable thermal zone under {root}"
