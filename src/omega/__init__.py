"""Exogenesis Omega: an edge-first recommendation system for smart TVs."""

__version__ = "0.1.0"
