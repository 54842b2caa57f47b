"""The durable processor service."""
