"""Force-field task of the paper: EScAIP (V1) on SPICE-format energies and forces.

* :mod:`tasks.forcefield.data` — streaming SPICE HDF5 / MACE-OFF extended-XYZ readers and the data module,
* :mod:`tasks.forcefield.generate` — the embedded GFN2-xTB data set (``python -m tasks.forcefield.generate``),
* :mod:`tasks.forcefield.graph` — plain-torch k-nearest neighbour lists on padded molecules,
* :mod:`tasks.forcefield.models.escaip` — the EScAIP model (equations in its docstring),
* :mod:`tasks.forcefield.task` — :class:`~tasks.forcefield.task.ForceFieldTask` (group action, losses),
* :mod:`tasks.forcefield.units` — unit conversions and SPICE's isolated-atom reference energies.
"""
