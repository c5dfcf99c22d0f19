"""One cog per feature; bot/client.py loads them in setup_hook."""
