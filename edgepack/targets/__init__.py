"""Target registry: device profiles as data files, validated by :mod:`edgepack.targets.schema`."""
