"""Br35H as a TensorFlow Datasets dataset (manual download) and its loader."""
from brainjax.data.br35h.br35h_dataset_builder import Br35h
from brainjax.data.br35h.loader import load_br35h_records

__all__ = ['Br35h', 'load_br35h_records']
