"""The exporter interface every runtime implements, the records it returns, and what it declares.

Adding a runtime is one package under ``edgepack/exporters/``: subclass :class:`Exporter`, set ``runtime`` to
the value profiles use in their ``runtime`` field, declare its :class:`Capabilities` (how placement reads its
graphs, how the host bench loads it, how its formats are packaged for apps), and register the class in the
``edgepack.exporters`` entry-point group. Nothing outside that package names the runtime or its formats: the
placement check, ``check``, the host runner and ``package`` ask :mod:`edgepack.exporters.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgepack.compress.recipe import Recipe
from edgepack.errors import UnsupportedError
from edgepack.data.dataset import Dataset
from edgepack.hashing import file_sha256
from edgepack.models.source import ModelSource, TensorSpec
from edgepack.targets.schema import TargetProfile

if TYPE_CHECKING:
    from edgepack.contract.metadata import Contract
    from edgepack.targets.placement import GraphOp

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Toolchain:
    """Which packages an exporter needs, their installed versions, and what is missing."""

    versions: dict[str, str]
    missing: dict[str, str] = field(default_factory=dict)
    """package -> install hint, for packages that are not installed."""

    @property
    def available(self) -> bool:
        return not self.missing

    @classmethod
    def of(cls, *distributions: str) -> "Toolchain":
        versions: dict[str, str] = {}
        missing: dict[str, str] = {}
        for dist in distributions:
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                missing[dist] = f"pip install {dist}"
        return cls(versions, missing)


@dataclass(frozen=True)
class Artifact:
    """The result of one export: files, hashes, I/O as the artifact sees it, and how it was made."""

    target_id: str
    runtime: str
    path: Path
    """Main file of the artifact (e.g. model.onnx, model.xml, model.tflite)."""
    files: tuple[Path, ...]
    """Every file belonging to the artifact (``path`` included), all under one directory."""
    format: str
    precision: str
    recipe: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    toolchain: dict[str, str]
    converter: str
    """Which conversion path produced it (e.g. ``onnx2tf``, ``litert-torch``)."""
    notes: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def sha256(self) -> str:
        """Hash of the main file (every file is hashed individually in the bundle manifest)."""
        return file_sha256(self.path)

    def entry(self, prefix: str = "") -> dict[str, Any]:
        """The manifest-style record of this artifact, its paths relative to its directory under ``prefix``
        (the inverse of :func:`edgepack.device_bench.runners.base.artifact_from_entry`)."""
        root = self.path.parent
        return {
            "path": f"{prefix}{self.path.relative_to(root).as_posix()}",
            "files": [f"{prefix}{f.relative_to(root).as_posix()}" for f in self.files],
            "format": self.format,
            "precision": self.precision,
            "converter": self.converter,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "settings": self.settings,
            "notes": list(self.notes),
        }


class Predictor(ABC):
    """Runs an artifact on this host. Takes and returns arrays keyed by the *source* model's I/O names,
    in the source's layout, so parity and gates compare like with like."""

    proxy_for: ClassVar[str | None] = None
    """Set when this predictor stands in for a runtime that cannot run here (numerics only, no latency)."""
    runtime_clock: ClassVar[str | None] = None
    """Set when the runtime times each inference itself (what its vendor benchmark tool reports): names
    that clock, and :meth:`runtime_latency_ms` reads it."""

    @abstractmethod
    def __call__(self, inputs: Arrays) -> Arrays: ...

    def runtime_latency_ms(self) -> float | None:
        """The runtime's own timing of the last inference (see :attr:`runtime_clock`), or ``None``."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""


class CallablePredictor(Predictor):
    """A predictor wrapping a plain function."""

    def __init__(self, fn: Callable[[Arrays], Arrays]) -> None:
        self._fn = fn

    def __call__(self, inputs: Arrays) -> Arrays:
        return self._fn(inputs)


@dataclass(frozen=True)
class NotRunnable:
    """Why an artifact cannot run on this host (the manifest records the reason)."""

    reason: str


@dataclass(frozen=True)
class BenchAdapter:
    """How the host bench loads this runtime's predictor with a chosen thread count."""

    module: str
    """Imported before the cold-start timer starts (a library import is not a model load)."""
    distribution: str
    """PyPI distribution of the runtime: the install hint when ``module`` is missing, and the version the
    bench records."""
    build: Callable[[Artifact, int | None], tuple[Predictor, int]]
    """``(artifact, threads or None) -> (predictor, threads used)``."""


@dataclass(frozen=True)
class IsolatedEnv:
    """A toolchain whose pins conflict with edgepack's environment: its own venv, created ahead of time by
    ``edgepack toolchains install NAME`` from the package registry (an export never downloads)."""

    name: str
    requirements: tuple[str, ...]
    """Pinned requirements installed with their dependencies."""
    without_dependencies: tuple[str, ...] = ()
    """Pinned requirements installed with ``--no-deps`` (their declared pins would pull what the venv must not
    have, e.g. a multi-GB CUDA torch); what they import comes from :attr:`requirements` or :attr:`borrowed`."""
    borrowed: tuple[str, ...] = ()
    """Distributions the toolchain imports but only for names it does not use at run time, taken from edgepack's
    own environment (appended to the venv's path, after its own packages) instead of installed again."""
    check: str = ""
    """Python source that must run in the venv once installed (an import of the toolchain)."""


@dataclass(frozen=True)
class Packaging:
    """How ``edgepack package`` and the bundle's snippets deliver one artifact format to one app platform."""

    format: str
    """The artifact format (a key of :attr:`Exporter.artifact_formats`)."""
    platform: str
    """The app platform (``edgepack package --platform``) it is packaged for."""
    distribution: str | None = None
    """PyPI distribution whose version the bundle records for the target; the deliverable pins its runtime to it."""
    snippet: tuple[str, str] | None = None
    """``(path under snippets/, template)`` of the bundle's minimal load-and-run snippet for this format."""
    python_runtime: str | None = None
    """Key of the runtime in the generated Python runner (``python`` platform). The exporter's templates hold
    ``python/open_<key>.py.j2`` (the runner's ``_open_<key>`` method: ``(path, threads) -> (run, contract JSON)``)
    and ``snippets/python/run_<key>.py.j2`` (the bundle snippet's ``run`` function)."""
    python_module: str | None = None
    """The module the generated Python runner imports for :attr:`python_runtime` (whether it is installed)."""
    simulate_quantization: bool = False
    """The Python runner runs the graph with optimisations off, so Q/DQ pairs execute as simulated quantization
    (what the device runtime computes), not the host runtime's own int8 kernels."""
    app_library: str | None = None
    """The runtime's app dependency (Maven ``group:name``), versioned with ``distribution``'s recorded version."""
    app_templates: str | None = None
    """Template folder of the app wrapper for :attr:`platform` (``android``: ``Runner.kt.j2``,
    ``dependencies.gradle.kts.j2`` and ``README.md.j2`` in it), in the exporter's :attr:`Capabilities.templates`."""


@dataclass(frozen=True)
class Capabilities:
    """What an exporter declares so that placement, ``check``, the host bench and ``package`` can ask instead of
    naming the runtime (:mod:`edgepack.exporters.registry` answers from these)."""

    op_vocabulary: str | None = None
    """The op vocabulary of this runtime's graphs (ONNX op types, TFLite builtins, MIL ops, ...). Profiles name
    it in their accelerators' ``op_vocabulary``; the set of declared vocabularies is what profiles may use."""
    graph_formats: frozenset[str] = frozenset()
    """Artifact formats :meth:`Exporter.graph_ops` reads (in :attr:`op_vocabulary`)."""
    bench: BenchAdapter | None = None
    """How the host bench sets this runtime's thread count; ``None``: the bench runs :meth:`Exporter.predictor`
    with the runtime's own threading."""
    packaging: tuple[Packaging, ...] = ()
    """How each of its formats is packaged, per app platform (one entry per format and platform across all
    exporters: a format another runtime also writes, such as plain ONNX, is packaged by one of them)."""
    device_build_script: str | None = None
    """File of the artifact that builds the device-only output (engine, compiled model) on the device."""
    templates: Path | None = None
    """Folder of this runtime's app templates, searched (after ``edgepack/package/templates``) for the templates
    that ``package``'s platform builders and :attr:`Packaging.snippet` name."""
    isolation: str = "in-process"
    """How the converter runs: ``in-process``, ``worker process`` (its own Python process, for a converter that
    must not share the export's interpreter), or ``own venv`` (pins that conflict with edgepack's)."""
    optional_tools: tuple[tuple[str, str], ...] = ()
    """``(program on PATH, what it adds here)`` for vendor tools the export uses when they are installed."""
    isolated_env: IsolatedEnv | None = None
    """The venv this runtime's toolchain runs in (``isolation = "own venv"``), or ``None``."""
    device_runners: frozenset[str] = frozenset()
    """Schemes of the device-bench runners that measure this runtime's artifacts on the device with the vendor's
    own tool (``adb``: LiteRT's benchmark_model; ``ios``: the Core ML XCTest harness)."""
    keeps_scopes_float: bool = False
    """Whether this runtime's quantizer keeps every ONNX node under a scope named in ``recipe.exclude``
    (``/edgepack_nms``) in float. The pipeline then keeps an appended NMS float; runtimes that map exclusions
    by other means leave it to their converter."""


NO_CAPABILITIES = Capabilities()


WEIGHT_CODING_PASSES: dict[str, str] = {"palettize": "stores weights as look-up tables (palettization)"}
"""Passes whose only benefit is how the format stores the weights, with what they do (a recipe with one is
refused by exporters that do not list it in :attr:`Exporter.stored_weight_codings`)."""


class Exporter(ABC):
    """One runtime's adapter: export a source for a profile with a recipe; run it where possible."""

    runtime: ClassVar[str]
    capabilities: ClassVar[Capabilities] = NO_CAPABILITIES
    """What this runtime declares to placement, ``check``, the host bench and packaging. A subclass serving
    another runtime (the Edge TPU's extends TFLite's) declares its own."""
    distributions: ClassVar[tuple[str, ...]] = ()
    """PyPI distributions whose versions are recorded as the toolchain."""
    artifact_formats: ClassVar[dict[str, str]] = {}
    """The artifact formats this exporter writes, each with how its main file (or directory) is named
    (``{"tflite": ".tflite"}``); ``verify`` refuses a bundle whose artifact record claims anything else."""

    def toolchain(self) -> Toolchain:
        """Installed versions of this runtime's toolchain, and install hints for missing parts."""
        return Toolchain.of(*self.distributions)

    stored_weight_codings: ClassVar[frozenset[str]] = frozenset()
    """Weight-coding passes (:data:`WEIGHT_CODING_PASSES`) whose result this runtime's format stores compactly."""

    def supports(self, recipe: Recipe) -> str | None:
        """``None`` when this exporter can apply ``recipe``, else the reason it cannot (runtime-specific rules;
        callers ask :meth:`refusal`, which adds the rules every exporter shares)."""
        return None

    def refusal(self, recipe: Recipe) -> str | None:
        """``None`` when this exporter can apply ``recipe``, else why not: a weight-coding pass whose coding
        the format cannot store (the artifact would lose accuracy and save no bytes), or :meth:`supports`."""
        for spec in recipe.passes:
            if spec.name in WEIGHT_CODING_PASSES and spec.name not in self.stored_weight_codings:
                return (f"recipe '{recipe.name}' {WEIGHT_CODING_PASSES[spec.name]}, which {self.runtime} artifacts "
                        "store as plain values: accuracy lost, no bytes saved")
        return self.supports(recipe)

    def require_support(self, recipe: Recipe) -> None:
        """Raise :class:`~edgepack.errors.UnsupportedError` with :meth:`refusal`'s reason when it refuses ``recipe``."""
        reason = self.refusal(recipe)
        if reason is not None:
            raise UnsupportedError(reason)

    @abstractmethod
    def export(
        self,
        source: ModelSource,
        profile: TargetProfile,
        recipe: Recipe,
        calib: Dataset | None,
        workdir: Path,
    ) -> Artifact:
        """Convert ``source`` into ``workdir`` and return the artifact record."""

    @abstractmethod
    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        """A host predictor for ``artifact``, or why it cannot run here."""

    def embed_contract(self, artifact: Artifact, contract: "Contract") -> None:  # noqa: B027 - optional hook
        """Write ``contract`` (labels, I/O, preprocessing, provenance) into the artifact's own container, in
        place. Called by ``export()`` right before it returns, so parity and the bundle's hashes see the final
        file. Default: nothing (runtimes without a metadata container)."""

    def excludable_layers(
        self,
        source: ModelSource,
        profile: TargetProfile,
        recipe: Recipe,
        calib: Dataset | None,
        workdir: Path,
        layers: list[str],
    ) -> list[str]:
        """Which of ``layers`` (source ONNX node names) this runtime's quantizer can keep in float when
        ``recipe`` (static int8) names them in ``exclude``; by default all of them. Sensitivity analysis
        ranks only these."""
        return list(layers)

    def intermediate_values(
        self, artifact: Artifact, tensors: list[str], feeds: Arrays, *, hub: Path
    ) -> dict[str, np.ndarray] | None:
        """The artifact's values of the source (ONNX hub at ``hub``) tensors ``tensors`` for ``feeds`` (those it
        can find, in the source's layout), for the first-divergent-layer report; ``None`` when this runtime cannot
        expose them here."""
        return None

    def graph_ops(self, path: Path, fmt: str) -> list["GraphOp"]:
        """The ops of the graph at ``path`` (an artifact of format ``fmt`` in :attr:`Capabilities.graph_formats`),
        in :attr:`Capabilities.op_vocabulary`, for the placement check."""
        raise UnsupportedError(f"runtime {self.runtime} has no graph reader for format '{fmt}'")
