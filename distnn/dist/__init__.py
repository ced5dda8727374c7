"""Data-parallel training on Ray: the only package that imports ray (lazily, so that
importing distnn does not start or need it)."""
