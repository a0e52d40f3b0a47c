"""sendpost-agent: what both processes share (configuration, the queue map, the CLI)."""

__version__ = "0.1.0"
