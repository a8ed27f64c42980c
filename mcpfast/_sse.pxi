# (the sse component goes here)
