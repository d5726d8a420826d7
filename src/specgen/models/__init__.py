"""Model pairs (models.yaml), the local Hub cache, and downloads into it."""
