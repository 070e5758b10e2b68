"""Federated learning: the client class, aggregation, the built-in engine, run directories and reports."""
