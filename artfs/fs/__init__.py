"""The FUSE client of the core: the registry as a directory tree."""
