"""Partial pulls into a directory: the plan, the files' writing, path safety, and the
DiffID check of the tree as written."""
