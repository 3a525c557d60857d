"""Binds every scenario under features/ to pytest."""

from pytest_bdd import scenarios

scenarios(".")
