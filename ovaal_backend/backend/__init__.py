"""The Label Studio ML backend: HTTP app, SQLite store, Label Studio client and conversions, the projects."""
