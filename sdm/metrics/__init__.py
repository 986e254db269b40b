"""Measures of generated images."""
