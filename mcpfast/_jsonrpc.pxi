# (the jsonrpc component goes here)
