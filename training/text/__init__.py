"""Text interest model.  torch / transformers are imported only inside this package's modules."""
