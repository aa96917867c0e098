"""Synthetic spine CT phantoms with VerSe-style labels and centroids, written in the real dataset layouts."""

from vertseg.data.synth.dataset import RECORD_NAME, generate_dataset
from vertseg.data.synth.layouts import LAYOUTS
from vertseg.data.synth.scan import SIZES, Phantom, make_phantom

__all__ = ["LAYOUTS", "RECORD_NAME", "SIZES", "Phantom", "generate_dataset", "make_phantom"]
