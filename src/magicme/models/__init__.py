"""Loading SD-1.5 + AnimateDiff weights (hub ids, folders, single files) and the samplers VCD runs with."""
