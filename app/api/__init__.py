"""The HTTP surface: thin routers that validate input and hand work to the bus."""
