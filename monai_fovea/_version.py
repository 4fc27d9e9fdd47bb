"""The package version, kept in one place (read by setup.cfg via ``attr:``)."""

__version__ = "0.1.0"
