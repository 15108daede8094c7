"""Admin and metrics servers (local HTTP listeners of their own)."""
