"""The Hydra app around the RLG library: config schema, the builder, stages, store, prompts, trackers."""
