"""Pure, synchronous domain logic: no trio, no sqlite, no quart imports."""
