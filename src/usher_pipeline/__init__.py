"""usher_pipeline: persistence and provenance for the Usher candidate-gene screen."""

from usher_pipeline.scaffold import library_path

__version__ = "0.1.0"

__all__ = ["__version__", "library_path"]
