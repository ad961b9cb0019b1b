"""HTTP surface: REST API (and later the Moonraker facade and the dashboard)."""
