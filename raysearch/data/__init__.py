"""The data stage: recording files, the synthetic fish, preprocessing into a train/test Dataset."""
