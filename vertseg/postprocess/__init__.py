"""Post-processing (section 2.6): connected components, voxel-to-centroid assignment, sequence decoding. Pure numpy."""

from vertseg.postprocess.assign import PostprocessSettings, VertebraRecord, labelmap_from_predictions
from vertseg.postprocess.sequence import Decoded, decode, decode_dp, decode_paper

__all__ = [
    "PostprocessSettings", "VertebraRecord", "labelmap_from_predictions", "Decoded", "decode", "decode_dp", "decode_paper",
]
