"""The jobs: training, deblurring, evaluation and blur synthesis CLIs (thin layers over the libraries)."""
