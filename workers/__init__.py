"""The Glimpse worker: Redis in, attribution maps out."""
