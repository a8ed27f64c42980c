"""The wire layer: sans-IO parsers (the compiled core and its pure-Python twin), JSON-RPC
codes and error bodies, HTTP heads.  Imports nothing else of mcpfast."""
