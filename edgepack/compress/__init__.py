"""Compression: named recipes (data), torch-level passes and the accuracy gate."""
