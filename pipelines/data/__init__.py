"""Jets on disk: JetNet-layout files, Pythia8 + FastJet generation, digit images as point clouds."""
