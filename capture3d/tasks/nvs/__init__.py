"""Novel-view synthesis: posed scenes, 3D Gaussian Splatting, NeRF, image metrics."""
