"""Structure-from-Motion with COLMAP: image folders, mapping with a fallback ladder, export, evaluation."""
