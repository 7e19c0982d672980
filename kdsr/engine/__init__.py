"""The training engine: builds a run from a config and owns every forward pass."""
