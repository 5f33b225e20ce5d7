"""What a run starts from: the recipe, the data and the model."""
