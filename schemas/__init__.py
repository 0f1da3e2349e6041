"""The wire contract shared by the gateway and the workers: pydantic models and Redis key names."""

SERVICE_VERSION = "0.1.0"
