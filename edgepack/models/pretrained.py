"""Pretrained weights for ``torchvision:NAME`` and ``timm:NAME`` sources.

A model name means the *trained* model: its default pretrained weights from the local torch / Hugging Face
cache, downloaded (with the library's own progress bar) when they are not cached, unless edgepack is
offline (``--offline`` or ``EDGEPACK_OFFLINE=1``): then the export stops with one line naming ``--weights
FILE`` and ``--random-weights``. ``--random-weights`` exports the untrained architecture and says so in the
summary, the manifest (``source.weights``) and the model card. The class names of the weights become the
source's labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack.errors import SourceError

OFFLINE_ENV = "EDGEPACK_OFFLINE"
RANDOM_WEIGHTS = "random (untrained architecture, --random-weights)"


def offline() -> bool:
    """True when edgepack must not download anything (``EDGEPACK_OFFLINE=1``, set by ``--offline``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Pretrained:
    """Where a source's weights came from, and their class names."""

    description: str
    labels: list[str] | None = None


def _missing(uri: str, where: str) -> SourceError:
    return SourceError(
        f"{uri}: pretrained weights are not in the local cache ({where}) and edgepack is offline",
        hint="pass --weights FILE (.safetensors or a state-dict .pt), or --random-weights to export the untrained "
             "architecture",
    )


def load_torchvision_weights(module: Any, name: str, uri: str) -> Pretrained:
    """Load ``name``'s default torchvision weights into ``module`` (from ``torch.hub``'s cache, or downloaded)."""
    import torch
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise SourceError(f"{uri}: torchvision publishes no pretrained weights for '{name}'",
                          hint="pass --weights FILE, or --random-weights") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file() and offline():
        raise _missing(uri, str(cached))
    if cached.is_file():
        state = torch.load(cached, map_location="cpu", weights_only=True)
    else:
        state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=True, check_hash=True)
    module.load_state_dict(state)
    categories = weights.meta.get("categories")
    return Pretrained(f"pretrained: torchvision {weights}", list(categories) if categories else None)


def create_timm_pretrained(name: str, uri: str) -> tuple[Any, Pretrained]:
    """``timm.create_model(name, pretrained=True)`` from the Hugging Face cache (or downloaded when online)."""
    import timm

    previous = os.environ.get("HF_HUB_OFFLINE")
    if offline():
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        module = timm.create_model(name, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - unknown names and hub/network errors: one line
        if "Unknown model" in str(exc):
            raise SourceError(f"{uri}: {str(exc).splitlines()[0]}", hint="run timm.list_models() for names") from None
        if offline():
            raise _missing(uri, "Hugging Face hub cache") from None
        raise SourceError(f"{uri}: could not fetch pretrained weights: {type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0][:200]}", hint="pass --weights FILE, or --random-weights") from None
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    return module, Pretrained(f"pretrained: timm {cfg.get('hf_hub_id') or name}", _timm_labels(module))


def _timm_labels(module: Any) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(module)
        return list(ImageNetInfo(subset).label_descriptions()) if subset else None
    except Exception:  # noqa: BLE001 - labels are a convenience; weights without a known class list have none
        return None
