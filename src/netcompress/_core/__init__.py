"""Infrastructure every part of netcompress shares: layers, tensors, transactions, descriptions, files."""
