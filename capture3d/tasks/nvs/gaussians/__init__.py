"""3D Gaussian Splatting (Kerbl et al. 2023): the model, projection, rasterizers and densification.

Modules: :mod:`.sh` (spherical harmonics), :mod:`.project` (EWA projection), :mod:`.rasterize`
(tile-based CPU rasterizer), :mod:`.dense` (every-Gaussian-every-pixel reference), :mod:`.render`
(the backend interface: our CPU rasterizer or gsplat's CUDA one), :mod:`.model` (parameters and
initialisation), :mod:`.strategy` (adaptive density control), :mod:`.ply` (viewer export).
"""
