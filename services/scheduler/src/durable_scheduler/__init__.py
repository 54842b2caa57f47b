"""The durable scheduler service: starts invocations when schedules fire."""
