# (the http component goes here)
