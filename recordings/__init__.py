"""A user's own recordings: imported, checked against a declared model, stored as datasets."""
