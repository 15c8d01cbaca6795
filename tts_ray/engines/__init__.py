"""Engines: the generator and scorer backends (vLLM) behind a small protocol."""
