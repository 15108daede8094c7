"""Routing: tenant extraction, the route table, its sources and the route filter."""
