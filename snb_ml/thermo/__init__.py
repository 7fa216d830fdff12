"""Thermodynamics of defects: vibrational free energies and entropies from ML force fields."""
