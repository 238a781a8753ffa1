"""Where manifests come from besides a folder: a Git repository followed as Flux follows it."""
