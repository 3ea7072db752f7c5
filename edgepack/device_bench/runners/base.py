"""The runner interface, URI dispatch, and the artifact record as runners ship it.

A runner measures one artifact on one device: ``Runner.run(artifact, config) -> BenchResult``.
:func:`runner_for_uri` picks the runner class from the URI scheme through :data:`RUNNERS`
(scheme -> ``module:Class``, imported on first use); adding a runner is one module and one line there.

Artifacts travel as a manifest-style artifact entry (the same keys as ``manifest["targets"][id]["artifact"]``)
with paths relative to a root directory, plus the input specs to feed: see :func:`job_to_dict` and
:func:`artifact_from_entry`.
"""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl

from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.errors import BundleError, EdgepackError, InputError, UnsupportedError
from edgepack.exporters.base import Artifact
from edgepack.models.source import Preprocess, QuantParams, TensorSpec

if TYPE_CHECKING:
    from edgepack.targets.registry import Registry

RUNNERS: dict[str, str] = {
    "host": "edgepack.device_bench.runners.host:HostRunner",
    "ssh": "edgepack.device_bench.runners.ssh:SshRunner",
    "adb": "edgepack.device_bench.runners.adb:AdbRunner",
    "ios": "edgepack.device_bench.runners.ios:IosRunner",
}
"""URI scheme -> ``module:Class`` of its runner."""

JOB_FILE = "artifact.json"
"""Name of the job description the SSH runner copies next to the artifact files."""


class RunnerError(EdgepackError):
    """A device could not be reached, or the benchmark run on it failed."""


class Runner(ABC):
    """Measures artifacts on one device."""

    scheme: ClassVar[str]
    option_names: ClassVar[tuple[str, ...]] = ()
    """Options the runner accepts (in the URI query or as keyword options)."""
    feeds_input_specs: ClassVar[bool] = True
    """Whether the runner builds its inputs from the ``inputs`` specs it is given (so ``BenchConfig.batch``
    applies); a runner whose device tool feeds the artifact's own shapes sets False."""
    vendor_tool: ClassVar[bool] = False
    """Whether the runner drives a runtime vendor's benchmark tool on the device: it then runs only the formats
    of the runtimes that declare its scheme (:attr:`~edgepack.exporters.base.Capabilities.device_runners`)."""
    uses_profiles: ClassVar[bool] = False
    """Whether the runner reads device facts from the artifact's target profile: such a runner's
    ``from_uri`` takes the target ``registry`` as a keyword argument."""

    @classmethod
    @abstractmethod
    def from_uri(cls, uri: str, options: Mapping[str, str]) -> "Runner":
        """Build the runner for ``uri``; ``options`` are already merged with the URI query and checked."""

    @property
    @abstractmethod
    def uri(self) -> str:
        """The runner's URI as recorded in results (no query options)."""

    @abstractmethod
    def run(
        self, artifact: Artifact, config: BenchConfig, *, inputs: Sequence[TensorSpec] | None = None
    ) -> BenchResult:
        """Measure ``artifact``. ``inputs`` are the specs of what its predictor takes (default: its own inputs)."""

    @classmethod
    def formats(cls) -> tuple[str, ...]:
        """Artifact formats the runner runs (``Artifact.format``); empty: whatever its predictor or agent loads."""
        if not cls.vendor_tool:
            return ()
        from edgepack.exporters.registry import device_runner_formats

        return device_runner_formats(cls.scheme)

    def check_format(self, artifact: Artifact) -> None:
        """Refuse ``artifact`` when :meth:`formats` is not empty and does not name its format."""
        formats = self.formats()
        if formats and artifact.format not in formats:
            runs = " / ".join(f".{f}" for f in formats)
            raise UnsupportedError(
                f"{artifact.target_id}: the {self.scheme} runner runs {runs} artifacts, not {artifact.format}"
            )


def split_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, rest without query, query) of ``uri``; a bare word such as ``host`` is a scheme."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = uri, ""
    rest, _, query = rest.partition("?")
    return scheme, rest, query


def merge_options(uri: str, query: str, options: Mapping[str, str], allowed: Sequence[str]) -> dict[str, str]:
    """URI query and keyword options as one dict; unknown names and conflicting values are refused."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError as exc:
        raise InputError(f"runner {uri}: malformed query: {exc}") from None
    merged: dict[str, str] = {}
    for name, value in [*pairs, *options.items()]:
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise InputError(f"runner {uri}: unknown option '{name}'", hint=f"options: {known}")
        if name in merged and merged[name] != str(value):
            raise InputError(f"runner {uri}: option '{name}' given twice with different values")
        merged[name] = str(value)
    return merged


def runner_for_uri(uri: str, *, registry: "Registry | None" = None, **options: str) -> Runner:
    """The runner for ``uri`` (``host``, ``ssh://user@host[:port]``, ...); ``options`` add to the URI query.

    ``registry`` is the target registry runners that read device facts from profiles (``adb``, ``ios``) look
    artifacts' targets up in; callers pass the one they loaded (with the user's own profiles). ``None`` loads
    the shipped profiles, and only for such a runner.
    """
    scheme, _, query = split_uri(uri.strip())
    target = RUNNERS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" if s != "host" else s for s in RUNNERS)
        raise InputError(f"runner '{uri}': unknown scheme '{scheme}'", hint=f"known runners: {known}")
    module, name = target.split(":")
    cls: type[Runner] = getattr(import_module(module), name)
    merged = merge_options(uri, query, options, cls.option_names)
    if not cls.uses_profiles:
        return cls.from_uri(uri.strip(), merged)
    if registry is None:
        from edgepack.targets.registry import load_registry

        registry = load_registry()
    return cls.from_uri(uri.strip(), merged, registry=registry)  # type: ignore[call-arg]


# --------------------------------------------------------------------------------------------------
# Artifact records as runners ship them
# --------------------------------------------------------------------------------------------------


def spec_from_dict(data: Mapping[str, Any]) -> TensorSpec:
    """Inverse of :meth:`TensorSpec.to_dict`."""
    try:
        pre = data.get("preprocess")
        quant = data.get("quant")
        return TensorSpec(
            name=str(data["name"]),
            shape=tuple(d if isinstance(d, str) else int(d) for d in data["shape"]),
            dtype=str(data.get("dtype", "float32")),
            layout=data.get("layout"),
            preprocess=Preprocess(
                float(pre.get("scale", 1.0)),
                tuple(pre.get("mean", ())),
                tuple(pre.get("std", ())),
                str(pre.get("description", "")),
            )
            if pre
            else None,
            quant=QuantParams(float(quant["scale"]), int(quant["zero_point"])) if quant else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"malformed tensor spec {dict(data)!r}: {exc}") from None


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root.resolve()):
        raise BundleError(f"{root}: artifact path '{relative}' escapes the bundle")
    return path


def artifact_from_entry(
    root: Path,
    target_id: str,
    runtime: str,
    entry: Mapping[str, Any],
    *,
    recipe: str = "",
    toolchain: Mapping[str, str] | None = None,
) -> Artifact:
    """Rebuild an :class:`Artifact` from a manifest-style artifact ``entry`` whose paths are relative to ``root``."""
    try:
        return Artifact(
            target_id=target_id,
            runtime=runtime,
            path=_inside(root, entry["path"]),
            files=tuple(_inside(root, f) for f in entry["files"]),
            format=str(entry["format"]),
            precision=str(entry["precision"]),
            recipe=recipe,
            inputs=tuple(spec_from_dict(s) for s in entry["inputs"]),
            outputs=tuple(spec_from_dict(s) for s in entry["outputs"]),
            toolchain=dict(toolchain or {}),
            converter=str(entry.get("converter", "")),
            notes=tuple(entry.get("notes", ())),
            settings=dict(entry.get("settings", {})),
        )
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{root}: artifact entry of target '{target_id}' has a bad or missing {exc}") from None


def job_to_dict(artifact: Artifact, inputs: Sequence[TensorSpec]) -> dict[str, Any]:
    """The job a remote agent reads: the artifact entry (paths relative to the artifact's directory) and
    the input specs to feed."""
    return {
        "target": artifact.target_id,
        "runtime": artifact.runtime,
        "recipe": artifact.recipe,
        "toolchain": artifact.toolchain,
        "artifact": artifact.entry(),
        "inputs": [s.to_dict() for s in inputs],
    }


def job_from_dict(data: Mapping[str, Any], root: Path) -> tuple[Artifact, tuple[TensorSpec, ...]]:
    """Inverse of :func:`job_to_dict`, with files under ``root``."""
    try:
        artifact = artifact_from_entry(
            root, str(data["target"]), str(data["runtime"]), data["artifact"], recipe=str(data.get("recipe", "")),
            toolchain=data.get("toolchain"),
        )
        return artifact, tuple(spec_from_dict(s) for s in data["inputs"])
    except KeyError as exc:
        raise BundleError(f"{root}: job description lacks {exc}") from None


def remote_cleanup_note(remote: str, remove: "Callable[[], subprocess.CompletedProcess[str]]") -> str:
    """Run ``remove`` (deleting a runner's remote temp dir) and describe the outcome as a note; never raises,
    so the run's own error (if any) is the one reported."""
    try:
        done = remove()
    except EdgepackError as exc:
        return f"remote temp dir {remote} could not be removed: {exc}"
    if done.returncode != 0:
        return f"remote temp dir {remote} could not be removed: {done.stderr.strip()[:200]}"
    return f"remote temp dir {remote} removed"
