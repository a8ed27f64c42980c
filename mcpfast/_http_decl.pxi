# (declarations for the http component go here)
