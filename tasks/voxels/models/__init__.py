"""Voxel denoisers, one file each (equations in the class docstrings).

* :mod:`tasks.voxels.models.unet` — VoxMol's 3-D U-Net with coarse-level attention.
"""
