"""streamlens server: the aiohttp app, settings, routes and CLI."""

__version__ = "0.1.0"
