"""The Livepeer trickle protocol: wire names (protocol), the built-in channel server (server) and the clients (client)."""
