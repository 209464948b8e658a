"""Training: losses wiring, optimiser, device mesh, train state and the data-parallel step."""
