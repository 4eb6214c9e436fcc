"""The local stack: AWS emulated by a moto server, the warehouse an embedded PostgreSQL."""
