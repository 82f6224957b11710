"""ackwal's service: the Unix-socket server, journal, batcher, client and CLI."""

__version__ = "0.1.0"
