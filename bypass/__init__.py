"""Bypass: compile interposition specs and libc knowledge into LD_PRELOAD agents and shadows."""

__version__ = "0.1.0"
