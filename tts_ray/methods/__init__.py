"""Test-time-scaling methods: merging branches (voting) and, later, search."""
