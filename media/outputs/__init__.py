"""Per-stream outputs (`params.outputs`): RTMP(S) push and HLS, beside the trickle/WHEP sinks.

`spec` validates the `params.outputs` list, `base` is the interface every output implements, and
`runner` starts, feeds, updates and stops a stream's outputs as its params change.
"""
