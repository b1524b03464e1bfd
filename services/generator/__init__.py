"""Generator service: the tier catalogue and the backends that render images for it."""
