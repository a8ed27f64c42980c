"""The admin listener: /metrics, /healthz, /readyz."""
