"""Locust integration: the user class, stats bridge, the locustfile."""
