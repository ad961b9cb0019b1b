"""Long-lived trio services: the owner (the one task that changes the farm), its effects
and drivers, the bus, watchdog ticks, notifier, backups, retention, files, photos, slicing."""
