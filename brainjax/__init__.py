"""brainjax: synthetic brain-MRI generation and tumour classification in JAX/Flax."""
