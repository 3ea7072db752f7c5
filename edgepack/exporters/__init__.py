"""Exporters: one module per runtime, all implementing :class:`edgepack.exporters.base.Exporter`."""
