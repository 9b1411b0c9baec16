"""Tests that keep the documentation true: its examples run, its reference names everything."""
