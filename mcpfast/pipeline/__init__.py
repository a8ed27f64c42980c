"""The request pipeline: exchanges, routes, the gateway's checks and the byte passthrough."""
