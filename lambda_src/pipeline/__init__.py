"""The production Lambda code: sources, the shared loader, the handlers and the SQL they own."""
