"""scs-probe: does Sharpened Cosine Similarity beat convolution? Layers, zoo, training and analyses."""

__version__ = "0.1.0"
