"""Test support: fixtures, stubs and preparation shared by the tests."""
