"""Bundles: the one directory app teams receive (artifacts, reports, manifest with every file's hash)."""

from edgepack.bundle.verify import verify_bundle
from edgepack.bundle.writer import BundleWriter

__all__ = ["BundleWriter", "verify_bundle"]

