"""Dipole models, one file each (equations in the class docstrings).

* :mod:`tasks.dipoles.models.transformer` — a non-equivariant transformer over atoms with raw coordinates as input.
"""
