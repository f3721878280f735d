"""The REST API, /api/v1/ (DRF). Token or session authentication on every endpoint."""
