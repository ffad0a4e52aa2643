"""retrec's version, the one place (``pyproject.toml`` reads it; ``retrec.__version__`` re-exports it). A module of
its own so that modules recording it (bundle manifests, reindex reports) import no package facade."""

__version__ = "0.1.0"
