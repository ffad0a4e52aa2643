"""retrec — retrieval and recommendation serving stack."""

__version__ = "0.1.0"
