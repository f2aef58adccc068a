"""The ConVAE: model, reconstruction losses and training loop (a library: tensors in and out)."""
