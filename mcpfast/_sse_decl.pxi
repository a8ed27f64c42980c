# (declarations for the sse component go here)
