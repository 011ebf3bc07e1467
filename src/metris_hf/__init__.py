"""METRIS for Hugging Face transformers."""
