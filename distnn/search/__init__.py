"""Searching for settings: search spaces, Ray Tune, the learning-rate finder."""
