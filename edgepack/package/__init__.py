"""Deliverables for app teams built from a bundle: platform packages, generated wrappers, model card, diff."""
