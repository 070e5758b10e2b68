"""Training on one site's data: model factory, losses, the local training loop, evaluation."""
