# (declarations for the jsonrpc component go here)
