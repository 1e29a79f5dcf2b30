"""T2V VCD (Magic-Me section 3.2): AnimateDiff text-to-video started from the 3D Gaussian noise prior."""
