"""Voxel denoising (VoxMol): GEOM-drugs data, Gaussian voxeliser, 3-D U-Net and the task."""
