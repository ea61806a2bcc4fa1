"""napari dock widgets: thin Qt faces over the engine (one module per widget)."""
