"""Entry points: the HTTP server and the offline Engine."""
