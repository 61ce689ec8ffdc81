"""HTTP concerns shared by every route group (server, byoc, trickle): the route table and roles
(`routes`), request body parsing (`json_body`), the one error body and status table (`errors`), the
one SSE writer (`sse`), the outbound URL policy and `ClientSession` factory (`outbound`), and
redaction of secrets in URLs and log lines (`redact`)."""
