"""Filesystems (local and object stores) and packing sources into Parquet archives."""
