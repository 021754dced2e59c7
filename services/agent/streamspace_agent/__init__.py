"""StreamSpace agent: keeps a socket to a gateway replica and executes commands on a platform driver."""

__version__ = "0.1.0"
