"""Camera readings: images decoded, fitted to a model, its outputs read as labels or boxes."""
