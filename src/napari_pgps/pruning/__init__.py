"""Making networks smaller: PSP-Seg progressive branch pruning and structured channel pruning."""
