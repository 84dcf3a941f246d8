"""Training side of spkidd: builds the model files the daemon loads."""
