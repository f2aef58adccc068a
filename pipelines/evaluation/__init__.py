"""Every metric beside its truth floor, and the plots and reports people read."""
