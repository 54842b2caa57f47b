"""The engine: what runs invocations, and the rules by which work enters them."""
