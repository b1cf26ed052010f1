"""Force-field models, one file each (equations in the class docstrings).

* :mod:`tasks.forcefield.models.escaip` — EScAIP (V1): invariant attention trunk, direct non-equivariant force head.
"""
