"""kdsr core tests."""
