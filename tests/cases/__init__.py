"""Data, oracles, layer registries and fixtures that the tests of several public names share."""
