"""amsha-provider-parrot: an example third-party Amsha provider."""

__version__ = "1.0.0"
