"""Assets: content-addressed image storage, in a local directory or an S3-compatible bucket."""
