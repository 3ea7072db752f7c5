"""Coral Edge TPU: full-integer TFLite plus the Edge TPU compile step."""
