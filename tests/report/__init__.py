"""Tests of lib/report/, one file per module (a package: names such as test_parity.py exist in tests/ too)."""
