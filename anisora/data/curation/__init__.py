"""`anisora-data curate`: shot splitting, clip scores, filters, the manifest and its report."""
