"""Prometheus metrics of the server (``--enable-metrics``)."""
