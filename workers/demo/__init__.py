"""The shipped demo model `demo-lesions`: its synthetic data, network and training script."""
