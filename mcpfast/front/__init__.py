"""Client-facing transports other than Streamable HTTP.

A front serves its own endpoint paths (``Gateway.fronts``, asked when no route matches a
request's path) and turns what its clients send into requests to a route, run through
the gateway's own pipeline, so every check a route applies applies to them unchanged.

- ``legacy_sse`` -- the 2024-11-05 HTTP+SSE transport: ``GET <sse_path>`` opens a stream,
  ``POST <messages_path>?session_id=`` sends messages whose answers arrive on it.
"""
