"""The Glimpse gateway: HTTP in, Redis out. It never imports torch."""
