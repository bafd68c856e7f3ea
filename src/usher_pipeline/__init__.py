"""usher_pipeline: persistence and provenance for the Usher candidate-gene screen."""

__version__ = "0.1.0"

__all__ = ["__version__"]
