"""Datasets: readers for the real layouts, synthetic data, ingestion to Parquet."""
