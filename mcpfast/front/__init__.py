"""Client-facing transports other than Streamable HTTP (the 2024-11-05 HTTP+SSE one)."""
