"""The trickle protocol's wire names, shared by the server (trickle/server.py) and the client
(trickle/client.py) so the two can never disagree on a spelling."""

HEADER_SEQ = "Lp-Trickle-Seq"
HEADER_LATEST = "Lp-Trickle-Latest"
HEADER_CLOSED = "Lp-Trickle-Closed"
HEADER_RESET = "Lp-Trickle-Reset"
STATUS_SEGMENT_MISSING = 470  # the channel is open but the segment is not there (any more)
