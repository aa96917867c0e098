"""The dual-branch 3D U-Net (paper section 2.3). Knows nothing of data, training or Ray."""
