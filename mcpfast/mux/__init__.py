"""The virtual server: one MCP endpoint over several backends (docs/multiplexing.md).

Self-contained building blocks the gateway wires in; none of them does I/O:

- ``token``   -- stateless AES-GCM session tokens (the client's ``Mcp-Session-Id``)
- ``names``   -- namespacing of tool/prompt names and resource URIs, and routing tables
- ``ids``     -- routable ids: server→client request ids, progress tokens, SSE event ids
- ``merge``   -- initialize and list merging, the composite cursor, the list cache
- ``rewrite`` -- routing client messages and rewriting messages by splicing spans

See ``docs/multiplexing.md`` for the design.
"""
