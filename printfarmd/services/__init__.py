"""Long-lived trio services: scheduler, bus (and later watchdog, notifier, files)."""
