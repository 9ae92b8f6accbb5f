"""Reading layers and images: byte sources, the verified layer reader, layers read whole,
the merged tree, and the TOC checked against the tar."""
