"""Registers the built-in compression passes (explicitly, in one place)."""

from __future__ import annotations

from edgepack.compress.cluster import Palettize
from edgepack.compress.distill import DistillPass
from edgepack.compress.lowrank import LowRank
from edgepack.compress.passes import register_pass
from edgepack.compress.prune import MagnitudePrune, SemiStructured24, StructuredPrune
from edgepack.compress.qat import QatPass

for _pass in (MagnitudePrune(), StructuredPrune(), SemiStructured24(), LowRank(), Palettize(), DistillPass(), QatPass()):
    register_pass(_pass)
