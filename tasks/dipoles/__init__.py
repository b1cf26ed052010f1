"""Dipole task: molecular dipole moments (a vector, l = 1) of drug-like molecules, labelled by GFN2-xTB.

* :mod:`tasks.dipoles.generate` — the embedded data set (``python -m tasks.dipoles.generate``),
* :mod:`tasks.dipoles.data` — the HDF5 reader and the data module,
* :mod:`tasks.dipoles.models.transformer` — a non-equivariant transformer over atoms (equations in its docstring),
* :mod:`tasks.dipoles.baseline` — the point-charge model (the cheap equivariant baseline),
* :mod:`tasks.dipoles.task` — :class:`~tasks.dipoles.task.DipoleTask` (group action, losses),
* :mod:`tasks.dipoles.units` — bohr / e·bohr → Å / Debye.
"""
