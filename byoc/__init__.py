"""Livepeer integration: streamlens as a BYOC capability and an ai-runner live-video-to-video runner.

- `byoc.mount.mount_livepeer(app, manager=, settings=, streams=)`: routes, stream side
  channels, capability registration (the only entry point the server calls);
- `byoc.capabilities.CapabilityRegistry` (`app[CAPABILITIES_KEY]`): batch capabilities;
- `byoc.channels`: events (ai-runner status/trace/error), control (params) and data (JSON lines)
  channels of one stream; `byoc.registration`: orchestrator (un)registration.

`byoc` imports `media` only, never `server`.
"""
