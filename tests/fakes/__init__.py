"""Fake platform APIs on 127.0.0.1 for tests and benches."""
