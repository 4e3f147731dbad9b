"""Shared, torch-free contracts of the explanation service: settings, errors, method catalogue."""
