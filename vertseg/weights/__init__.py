"""The local weights registry: versioned checkpoints with their sha256 and config, so `vertseg predict` runs
without a path to a checkpoint and a shared model can be verified byte for byte."""

from vertseg.weights.fetch import FetchError, fetch, sha256_of
from vertseg.weights.registry import Entry, Registry, RegistryError, weights_home

__all__ = ["Entry", "FetchError", "Registry", "RegistryError", "fetch", "sha256_of", "weights_home"]
