"""The database: tables, sessions, queries and migrations (the only place that commits)."""
