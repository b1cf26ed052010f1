"""Flow-matching models on Cα coordinates, one file each (equations in the class docstrings).

* :mod:`tasks.flowmatching.models.proteina` — Proteina's non-equivariant Cα transformer.
"""
